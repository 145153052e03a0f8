//! Aligned plain-text tables for the command line (`plan`, `processors`), the way kubectl
//! prints them: columns padded to their widest cell, two spaces apart.

/// Renders `rows` (the first one is the header), one line each.
pub fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let rows = [["A".to_string(), "BB".into()], ["long".into(), "x".into()]];
        assert_eq!(super::aligned(&rows), "A     BB\nlong  x\n");
    }
}
