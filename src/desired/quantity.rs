//! Kubernetes resource quantities ("500m", "1Gi", "2.5", "1e3"), parsed only far enough to
//! compare two spellings of the same amount: the API server stores "1024Mi" as "1Gi".

/// The amount a quantity string stands for, or `None` when it is not a quantity.
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(base * factor)
}

/// True when both strings are quantities of the same amount.
pub fn same_amount(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_amount_are_equal() {
        assert!(same_amount("1024Mi", "1Gi"));
        assert!(same_amount("0.5", "500m"));
        assert!(same_amount("1000m", "1"));
        assert!(same_amount("1e3", "1k"));
        assert!(!same_amount("1G", "1Gi"));
        assert!(!same_amount("1", "2"));
    }

    #[test]
    fn junk_is_not_a_quantity() {
        for s in ["", "lots", "1Xi", "m", "."] {
            assert_eq!(parse(s), None, "{s}");
        }
        assert_eq!(parse("250m"), Some(0.25));
    }
}
