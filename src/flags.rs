//! What the subcommands' flag structs share: durations written as `90s` or `24h`, and the
//! defaults of a flags struct taken from its own `default_value`s (written once, in the
//! struct's attributes).

use std::time::Duration;

/// Parses `300ms`, `90s`, `5m`, `24h`, `1d` or plain seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// A flags struct as the command line would give it with no flags at all.
pub fn defaults<T: clap::Args>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    let matches = command.try_get_matches_from(["defaults"]).expect("every flag has a default");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(duration("5 minutes").is_err() && duration("").is_err() && duration("m").is_err());
    }

    #[test]
    fn defaults_come_from_the_attributes() {
        #[derive(clap::Args, Debug, PartialEq)]
        struct Example {
            #[arg(long, default_value = "7")]
            keep: usize,
            #[arg(long, value_parser = duration, default_value = "2m")]
            every: Duration,
        }
        assert_eq!(defaults::<Example>(), Example { keep: 7, every: Duration::from_secs(120) });
    }
}
