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
    /// The input image URL (its size is read from its header), or a local file or folder
    /// (sized from the files' own headers, offline; a folder gets a total).
    #[arg(
        value_name = "IMAGE_URL|PATH",
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
    if let Some(path) = args.image_url.as_deref().filter(|p| is_local(p)) {
        return estimate_local(ledger.as_mut(), &price, path, &args);
    }
    let (size, source) = match (&args.image_url, args.size) {
        (_, Some(size)) => (size, "given".to_string()),
        (Some(url), None) => {
            params::validate_image_url(url).map_err(|e| CliError::usage(e.to_string()))?;
            let gateway = Gateway::new(codeformer_ledger::gateway::GatewayConfig::with_setup(
                &global.base_url,
                None,
                global.net()?,
            ));
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

/// A local path (a file or folder that exists, or anything that is not a URL).
fn is_local(text: &str) -> bool {
    !text.contains("://") && (std::path::Path::new(text).exists() || params::is_local_path(text))
}

/// `estimate PATH` / `estimate DIR`: every image's size from its own header, no network.
fn estimate_local(
    ledger: Option<&mut Ledger>,
    price: &money::Price,
    path: &str,
    args: &EstimateArgs,
) -> CmdResult {
    use codeformer_ledger::storage::local;
    let dir = std::path::Path::new(path);
    let mut rows = Vec::new();
    let mut skipped = String::new();
    if dir.is_dir() {
        let (files, scan) = super::upload::read_folder(dir)?;
        skipped = scan.skipped();
        rows.extend(files);
    } else {
        rows.push(local::read_file(path, dir, None).map_err(CliError::usage)?);
    }
    let mut total = money::DecimalSum::new();
    let mut total_mp = money::DecimalSum::new();
    let mut items = Vec::new();
    for f in &rows {
        let (ow, oh) = money::output_size(f.size.0, f.size.1, args.upscale);
        let mp = money::megapixels(ow, oh);
        let cost = price.cost(ow, oh);
        total
            .add(cost)
            .map_err(|e| CliError::error(e.to_string()))?;
        total_mp
            .add(mp)
            .map_err(|e| CliError::error(e.to_string()))?;
        items.push((f, ow, oh, mp, cost));
    }
    let (total, total_mp) = (total.total(), total_mp.total());
    if let Some(l) = ledger {
        l.append(vec![codeformer_ledger::ledger::Event::new(None, None, "estimate").detail(format!(
            "estimate command: {path}: {} local image(s) at upscale {}: {} MP at {} USD/MP = {} USD",
            rows.len(), args.upscale, money::exact(total_mp), money::exact(price.per_megapixel), money::exact(total)
        ))])?;
    }
    match args.format {
        super::Format::Json => {
            let files: Vec<_> = items
                .iter()
                .map(|(f, ow, oh, mp, cost)| {
                    serde_json::json!({
                        "path": f.given, "input_width": f.size.0, "input_height": f.size.1,
                        "output_width": ow, "output_height": oh,
                        "output_megapixels": money::exact(*mp), "cost": money::exact(*cost),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "path": path, "files": files, "upscale": args.upscale,
                    "usd_per_megapixel": money::exact(price.per_megapixel),
                    "output_megapixels": money::exact(total_mp), "cost": money::exact(total),
                })
            );
        }
        super::Format::Csv => {
            println!(
                "path,input_width,input_height,output_width,output_height,output_megapixels,cost"
            );
            for (f, ow, oh, mp, cost) in &items {
                println!(
                    "{},{},{},{ow},{oh},{},{}",
                    csv_cell(&f.given),
                    f.size.0,
                    f.size.1,
                    money::exact(*mp),
                    money::exact(*cost)
                );
            }
        }
        super::Format::Table => {
            for (f, ow, oh, mp, cost) in &items {
                println!(
                    "{}  {}x{} -> {ow}x{oh}  {} MP  {} USD",
                    f.given,
                    f.size.0,
                    f.size.1,
                    money::exact(*mp),
                    money::exact(*cost)
                );
            }
            println!(
                "total: {} image(s), {} MP at {} USD/MP = {} USD{}",
                rows.len(),
                money::exact(total_mp),
                money::exact(price.per_megapixel),
                money::exact(total),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({skipped})")
                }
            );
        }
    }
    Ok(codeformer_ledger::exit::DONE)
}

fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
