//! `estimate`: the cost of a job without sending it.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::gateway::Gateway;
use codeformer_ledger::ledger::Ledger;
use codeformer_ledger::{money, params};

/// Cost of a job without sending it.
///
/// The input size comes from the image's header bytes (a small range request, never a whole
/// download) or, offline, from --size.
///
/// Examples:
///   codeformer-ledger estimate --size 1920x1080 --upscale 2
///   codeformer-ledger estimate https://example.com/face.jpg --upscale 4
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct EstimateArgs {
    /// The input image URL (its size is read from its header).
    #[arg(
        value_name = "IMAGE_URL",
        required_unless_present = "size",
        conflicts_with = "size"
    )]
    pub image_url: Option<String>,
    /// The input's size instead of a URL (no network).
    #[arg(long, value_name = "WxH", value_parser = super::common::size)]
    pub size: Option<(u32, u32)>,
    /// Enlargement factor.
    #[arg(long, value_name = "N", value_parser = super::common::upscale, default_value = "2")]
    pub upscale: u32,
    /// table for reading; json and csv (one header row, one row) with the same fields.
    #[arg(long, value_enum, default_value = "table")]
    pub format: super::Format,
}

pub fn run(global: &Global, args: EstimateArgs) -> CmdResult {
    // A ledger, if there is one, gives the price in force and caches probed sizes.
    let mut ledger = if global.ledger.exists() {
        Some(Ledger::open(&global.ledger)?)
    } else {
        None
    };
    let price = match &ledger {
        Some(l) => l.current_price()?,
        None => money::Price::default_rate(),
    };
    let (size, source) = match (&args.image_url, args.size) {
        (_, Some(size)) => (size, "given".to_string()),
        (Some(url), None) => {
            params::validate_image_url(url).map_err(|e| CliError::usage(e.to_string()))?;
            let gateway = Gateway::new(
                codeformer_ledger::gateway::GatewayConfig::new(&global.base_url, None)
                    .with_net(global.net()?),
            );
            let probe = codeformer_ledger::gateway::probe::probe_url(gateway.file_agent(), url)
                .map_err(|e| CliError::error(format!("{url}: {e}")))?;
            let size = (probe.size.width, probe.size.height);
            if let Some(l) = ledger.as_mut() {
                l.record_probe(url, size, &probe.size.format, probe.bytes_read, None)?;
            }
            (
                size,
                format!(
                    "{} header, {} bytes read",
                    probe.size.format, probe.bytes_read
                ),
            )
        }
        (None, None) => return Err(CliError::usage("give IMAGE_URL or --size WxH")),
    };
    let (ow, oh) = money::output_size(size.0, size.1, args.upscale);
    let mp = money::megapixels(ow, oh);
    let cost = price.cost(ow, oh);
    if let Some(l) = ledger.as_mut() {
        l.append(vec![codeformer_ledger::ledger::Event::new(None, None, "estimate").detail(format!(
            "estimate command: input {}x{} ({source}) at upscale {}: {ow}x{oh} = {} MP at {} USD/MP = {} USD",
            size.0, size.1, args.upscale, money::exact(mp), money::exact(price.per_megapixel), money::exact(cost)
        ))])?;
    }
    match args.format {
        super::Format::Json => println!(
            "{}",
            serde_json::json!({
                "input_width": size.0, "input_height": size.1, "size_source": source,
                "upscale": args.upscale, "output_width": ow, "output_height": oh,
                "megapixels": money::exact(mp), "price_per_mp": money::exact(price.per_megapixel),
                "cost": money::exact(cost), "currency": "USD",
            })
        ),
        super::Format::Csv => {
            println!("input_width,input_height,size_source,upscale,output_width,output_height,megapixels,price_per_mp,cost,currency");
            println!(
                "{},{},{},{},{ow},{oh},{},{},{},USD",
                size.0,
                size.1,
                super::jobs::csv_field(&source),
                args.upscale,
                money::exact(mp),
                money::exact(price.per_megapixel),
                money::exact(cost)
            );
        }
        super::Format::Table => {
            println!("input    {}x{} ({source})", size.0, size.1);
            println!(
                "output   {ow}x{oh} at upscale {} = {} MP",
                args.upscale,
                money::exact(mp)
            );
            println!(
                "cost     {} USD at {} USD per megapixel",
                money::exact(cost),
                money::exact(price.per_megapixel)
            );
        }
    }
    Ok(codeformer_ledger::exit::DONE)
}
