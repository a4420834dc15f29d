//! The configuration: `NAME=VALUE` lines (the `EGRESS_WARDEN_` prefix added), plus one
//! variable, chosen by the input, that carries a URL with credentials as a list item. Every
//! problem is rendered as it would be logged, and must show neither secret.
#![no_main]
use egress_warden::config::Config;

const SECRET_URL: &str = "https://warden:Hunter2Pw@api.example.com/v1?api_key=QuarkKey7";
const TAKES_URLS: &[&str] = &[
    "ROUTES",
    "WARM",
    "CLOUDWATCH_ENDPOINT",
    "ALLOW",
    "DNS_UPSTREAMS",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // The secrets' capitals are taken out of the fuzzed text, so only the injected URL can
    // carry them.
    let text: String = String::from_utf8_lossy(rest).replace(['H', 'Q'], "");
    let mut vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (format!("EGRESS_WARDEN_{name}"), value.to_owned()))
        .collect();
    let carrier = TAKES_URLS[usize::from(pick) % TAKES_URLS.len()];
    let name = format!("EGRESS_WARDEN_{carrier}");
    let value = match vars.iter().position(|(n, _)| *n == name) {
        Some(at) => format!("{},{SECRET_URL}", vars.remove(at).1),
        None if carrier == "ROUTES" => format!("payments={SECRET_URL}"),
        None => SECRET_URL.to_owned(),
    };
    vars.push((name, value));
    let (config, problems) = Config::from_vars(&vars);
    let summary = config.summary().to_string();
    for shown in problems.iter().map(|p| p.to_string()).chain([summary]) {
        assert!(!shown.contains("Hunter2Pw"), "password shown: {shown}");
        assert!(!shown.contains("QuarkKey7"), "query value shown: {shown}");
    }
});
