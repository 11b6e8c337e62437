//! The layering of bqrt's top-level modules, enforced on the source text.
//!
//! The layer list is written once, in `docs/architecture.md`, as the table between the lines
//! `<!-- layers: begin -->` and `<!-- layers: end -->` (columns: layer number, the modules in
//! backticks, prose). This test reads it from there and checks that:
//!
//! - every top-level module (`src/NAME.rs` or `src/NAME/`; `lib.rs` and `main.rs` are exempt) is in
//!   the table, and every module in the table exists;
//! - no module refers to a module of a higher layer (`crate::OTHER` in `use` items, grouped
//!   `use crate::{..}` trees and paths in code; the same layer is allowed);
//! - the top-level modules form no dependency circle (same-layer references included);
//! - the files of a directory module (`src/NAME/*.rs` but `mod.rs`, and `src/NAME/SUB/`) form no
//!   circle through `super::Y` or `crate::NAME::Y`.
//!
//! References are found by a small lexer that skips comments, string and char literals, so prose
//! such as `// see crate::runtime` does not count. `super::` never leaves the module it is used
//! in: at the top file of a module it is ignored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";
const BEGIN: &str = "<!-- layers: begin -->";
const END: &str = "<!-- layers: end -->";

// ------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------

#[test]
fn every_module_is_in_the_layer_table() {
    let table = layer_table();
    let modules = top_level_modules();
    let mut failures = Vec::new();
    for name in &modules {
        if !table.contains_key(name) {
            failures.push(format!(
                "{}: the top-level module `{name}` is not in the layer table of {DOC}; \
                 add it to the row of its layer",
                module_location(name)
            ));
        }
    }
    for (name, entry) in &table {
        if !modules.contains(name) {
            failures.push(format!(
                "{DOC}:{}: the layer table names `{name}` (layer {}), but there is no src/{name}.rs \
                 or src/{name}/; rename it in the table too, or remove it",
                entry.line, entry.layer
            ));
        }
    }
    report("modules and the layer table disagree", failures);
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let table = layer_table();
    let mut failures = Vec::new();
    for u in cross_module_uses(&all_files()) {
        let (Some(from), Some(to)) = (table.get(&u.from), table.get(&u.to)) else {
            continue; // not in the table: every_module_is_in_the_layer_table reports it
        };
        if to.layer > from.layer {
            failures.push(format!(
                "{}:{}: `{}`: `{}` (layer {}) uses `{}` (layer {}), a higher layer; move `{}` down \
                 to layer {} or below, or invert the dependency",
                u.file, u.line, u.written, u.from, from.layer, u.to, to.layer, u.to, from.layer
            ));
        }
    }
    report(
        &format!("references to a higher layer (layers: {DOC})"),
        failures,
    );
}

#[test]
fn no_circles_between_modules() {
    let mut graph = Graph::new();
    for u in cross_module_uses(&all_files()) {
        add_edge(&mut graph, &u.from, &u.to, &u);
    }
    report("circles between top-level modules", circles(&graph));
}

#[test]
fn no_circles_between_files_of_a_module() {
    let files = all_files();
    let mut failures = Vec::new();
    for name in top_level_modules() {
        let siblings = siblings(&name);
        let mut graph = Graph::new();
        for u in sibling_uses(&files, &name, &siblings) {
            add_edge(&mut graph, &u.from, &u.to, &u);
        }
        for circle in circles(&graph) {
            failures.push(format!("in src/{name}/: {circle}"));
        }
    }
    report("circles between the files of a module", failures);
}

#[test]
fn the_reference_scanner_ignores_comments_and_strings() {
    let code = "use crate::{runtime::X, executor::Y};\nfn f() { crate::gateway::g() }\n";
    assert_eq!(named_modules(code), ["executor", "gateway", "runtime"]);

    let quiet = [
        "// crate::cli",
        "/// crate::cli",
        "//! crate::cli",
        "/* crate::cli /* nested */ crate::cli */",
        "\"crate::cli\"",
        "\"escaped \\\" crate::cli\"",
        "r\"crate::cli\"",
        "r#\"a \" crate::cli\"#",
        "b\"crate::cli\"",
        "pub(crate) fn f() {}",
    ];
    for snippet in quiet {
        assert!(
            named_modules(snippet).is_empty(),
            "found a reference in {snippet:?}"
        );
    }

    // Char literals do not open strings, lifetimes are not char literals.
    assert_eq!(named_modules("let q = '\"'; crate::cli::run();"), ["cli"]);
    assert_eq!(named_modules("let q = '\\''; crate::cli::run();"), ["cli"]);
    assert_eq!(
        named_modules("fn f<'a>(x: &'a str) { crate::cli::run(x) }"),
        ["cli"]
    );
    // Nested groups, renames, `self` in a group and a line number.
    let nested = "use crate::{a::{self, b as c}, d::*};\n\nuse crate::e;";
    assert_eq!(named_modules(nested), ["a", "d", "e"]);
    let lines: Vec<usize> = references(nested).iter().map(|r| r.line).collect();
    assert_eq!(lines, [1, 1, 1, 3]);
}

#[test]
fn super_paths_resolve_inside_their_module() {
    let interp = ["python".to_string(), "interp".to_string()];
    let resolved = |code: &str| -> Vec<Vec<String>> {
        references(code)
            .iter()
            .filter_map(|r| resolve(&interp, r))
            .collect()
    };
    assert_eq!(
        resolved("use super::{task, env::E};"),
        [vec!["python", "task"], vec!["python", "env", "E"]]
    );
    assert_eq!(
        resolved("fn f() { super::task::g() }"),
        [vec!["python", "task", "g"]]
    );
    assert_eq!(
        resolved("mod tests { use super::*; }"),
        [vec!["python", "interp", "*"]]
    );
    assert_eq!(
        resolved("mod tests { } use self::x;"),
        [vec!["python", "interp", "x"]]
    );
    // `super::super` out of the top-level module is ignored, as is `super` at its top file.
    assert!(resolved("use super::super::cli;").is_empty());
    let top = ["python".to_string()];
    assert!(references("use super::cli;")
        .iter()
        .all(|r| resolve(&top, r).is_none()));
}

#[test]
fn the_layer_table_parser_reads_the_rows() {
    let doc = format!(
        "# x\n{BEGIN}\n| layer | modules | may use |\n| --- | --- | --- |\n\
         | 0 | `a`, `b` | std |\n| 1 | `c` | layer 0 |\n{END}\n"
    );
    let table = parse_layer_table(&doc).unwrap();
    let layers: Vec<(&str, usize, usize)> = table
        .iter()
        .map(|(n, e)| (n.as_str(), e.layer, e.line))
        .collect();
    assert_eq!(layers, [("a", 0, 5), ("b", 0, 5), ("c", 1, 6)]);
    assert!(parse_layer_table("no markers").is_err());
    assert!(parse_layer_table(&format!("{BEGIN}\n| layer | modules |\n{END}")).is_err());
    assert!(parse_layer_table(&format!("{BEGIN}\n| 0 | a |\n{END}")).is_err());
}

/// Fails with every failure, one a line.
fn report(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}:\n  {}\n",
        failures.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------
// The layer table in docs/architecture.md
// ------------------------------------------------------------------------------------------

/// Where a module sits in the table.
#[derive(Debug)]
struct Entry {
    layer: usize,
    /// 1-based line of its row in the doc.
    line: usize,
}

fn layer_table() -> BTreeMap<String, Entry> {
    let path = root().join(DOC);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_layer_table(&text).unwrap_or_else(|e| panic!("{DOC}: {e}"))
}

fn parse_layer_table(text: &str) -> Result<BTreeMap<String, Entry>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let marker = |m: &str| {
        let at = lines.iter().position(|l| l.trim() == m);
        at.ok_or(format!(
            "no line `{m}`; the layer table must sit between `{BEGIN}` and `{END}`"
        ))
    };
    let (begin, end) = (marker(BEGIN)?, marker(END)?);
    if end < begin {
        return Err(format!("`{END}` comes before `{BEGIN}`"));
    }
    let mut table = BTreeMap::new();
    for (at, row) in lines.iter().enumerate().take(end).skip(begin + 1) {
        let line = at + 1;
        let row = row.trim();
        if row.is_empty() {
            continue;
        }
        let cells = table_cells(row).ok_or(format!("line {line}: not a table row: {row}"))?;
        if is_header(&cells) {
            continue;
        }
        parse_row(&cells, line, &mut table)?;
    }
    if table.is_empty() {
        return Err(format!(
            "the table between `{BEGIN}` and `{END}` names no module"
        ));
    }
    Ok(table)
}

fn parse_row(
    cells: &[&str],
    line: usize,
    table: &mut BTreeMap<String, Entry>,
) -> Result<(), String> {
    let layer: usize = cells[0]
        .parse()
        .map_err(|_| format!("line {line}: the layer `{}` is not a number", cells[0]))?;
    let modules = cells
        .get(1)
        .ok_or(format!("line {line}: no modules cell"))?;
    for name in modules.split(',').map(str::trim) {
        let bare = name.strip_prefix('`').and_then(|n| n.strip_suffix('`'));
        let bare = bare.filter(|n| !n.is_empty()).ok_or(format!(
            "line {line}: write the module `{name}` in backticks"
        ))?;
        if let Some(old) = table.insert(bare.to_string(), Entry { layer, line }) {
            return Err(format!(
                "line {line}: `{bare}` is also in layer {} (line {})",
                old.layer, old.line
            ));
        }
    }
    Ok(())
}

fn table_cells(row: &str) -> Option<Vec<&str>> {
    let inner = row.strip_prefix('|')?;
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    Some(inner.split('|').map(str::trim).collect())
}

/// The header row (`| layer | modules | .. |`) or the separator (`| --- | --- |`).
fn is_header(cells: &[&str]) -> bool {
    let separator = |c: &&str| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':');
    cells[0].eq_ignore_ascii_case("layer") || cells.iter().all(separator)
}

// ------------------------------------------------------------------------------------------
// The source files
// ------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One source file of a top-level module.
struct SourceFile {
    /// Relative to the crate root, e.g. `src/python/interp.rs`.
    rel: String,
    /// Its module path, e.g. `["python", "interp"]`; a `mod.rs` is its directory's module.
    module: Vec<String>,
    text: String,
}

/// `src/NAME.rs` and `src/NAME/` (not `lib.rs`, `main.rs`, nor cargo's `src/bin/`).
fn top_level_modules() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for path in entries(&root().join("src")) {
        let name = file_name(&path);
        if path.is_dir() && name != "bin" {
            names.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                names.insert(stem.to_string());
            }
        }
    }
    assert!(
        !names.is_empty(),
        "found no module in {}",
        root().join("src").display()
    );
    names
}

/// `src/NAME/` or `src/NAME.rs`, for messages.
fn module_location(name: &str) -> String {
    let dir = root().join("src").join(name);
    if dir.is_dir() {
        format!("src/{name}/")
    } else {
        format!("src/{name}.rs")
    }
}

/// The files other than `mod.rs` in `src/NAME/` (by stem) and its subdirectories.
fn siblings(name: &str) -> BTreeSet<String> {
    let dir = root().join("src").join(name);
    let mut names = BTreeSet::new();
    for path in entries(&dir) {
        let file = file_name(&path);
        if path.is_dir() {
            names.insert(file);
        } else if let Some(stem) = file.strip_suffix(".rs").filter(|s| *s != "mod") {
            names.insert(stem.to_string());
        }
    }
    names
}

/// Every .rs file of every top-level module.
fn all_files() -> Vec<SourceFile> {
    let src = root().join("src");
    let mut paths = Vec::new();
    for name in top_level_modules() {
        let file = src.join(format!("{name}.rs"));
        if file.is_file() {
            paths.push(file);
        }
        walk(&src.join(&name), &mut paths);
    }
    let files: Vec<SourceFile> = paths.iter().map(|p| source_file(&src, p)).collect();
    assert!(!files.is_empty(), "found no .rs file in {}", src.display());
    files
}

fn source_file(src: &Path, path: &Path) -> SourceFile {
    let under_src = path.strip_prefix(src).unwrap();
    let mut module: Vec<String> = under_src
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = module.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap();
    if stem != "mod" {
        module.push(stem.to_string());
    }
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let rel = format!("src/{}", slash_path(under_src));
    SourceFile { rel, module, text }
}

fn slash_path(under_src: &Path) -> String {
    let parts: Vec<String> = under_src
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for path in entries(dir) {
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A directory's entries, sorted; none if it is not a directory.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = read.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

// ------------------------------------------------------------------------------------------
// Uses: who refers to whom, and where
// ------------------------------------------------------------------------------------------

/// One reference from `from` to `to` (two top-level modules, or two files of one module).
struct Use {
    from: String,
    to: String,
    file: String,
    line: usize,
    /// The reference as written, e.g. `crate::runtime::signals::GRACE`.
    written: String,
}

/// References from a top-level module to another one.
fn cross_module_uses(files: &[SourceFile]) -> Vec<Use> {
    let modules = top_level_modules();
    let mut uses = Vec::new();
    for file in files {
        let from = &file.module[0];
        for (r, target) in resolved_references(file) {
            let to = &target[0];
            if to != from && modules.contains(to) {
                uses.push(new_use(from, to, file, &r));
            }
        }
    }
    uses
}

/// References from one file (or subdirectory) of `src/NAME/` to a sibling.
fn sibling_uses(files: &[SourceFile], name: &str, siblings: &BTreeSet<String>) -> Vec<Use> {
    let mut uses = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.module[0] == name && f.module.len() >= 2)
    {
        let from = &file.module[1];
        for (r, target) in resolved_references(file) {
            let Some(to) = target.get(1).filter(|_| target[0] == name) else {
                continue;
            };
            if to != from && siblings.contains(to) {
                uses.push(new_use(from, to, file, &r));
            }
        }
    }
    uses
}

fn resolved_references(file: &SourceFile) -> Vec<(Reference, Vec<String>)> {
    let refs = references(&file.text).into_iter();
    refs.filter_map(|r| {
        resolve(&file.module, &r)
            .filter(|t| !t.is_empty())
            .map(|t| (r, t))
    })
    .collect()
}

fn new_use(from: &str, to: &str, file: &SourceFile, r: &Reference) -> Use {
    Use {
        from: from.to_string(),
        to: to.to_string(),
        file: file.rel.clone(),
        line: r.line,
        written: r.path.join("::"),
    }
}

/// The absolute path (without `crate`) a reference names, seen from the file of module path
/// `module`; None when `super` leaves the file's top-level module (ignored, see the header).
fn resolve(module: &[String], r: &Reference) -> Option<Vec<String>> {
    let (first, mut rest) = r.path.split_first()?;
    if first == "crate" {
        return Some(rest.to_vec());
    }
    let mut here: Vec<String> = module.iter().chain(&r.inline).cloned().collect();
    if first == "super" {
        here.pop();
        while let Some((_, tail)) = rest.split_first().filter(|(s, _)| *s == "super") {
            here.pop();
            rest = tail;
        }
    }
    if here.is_empty() {
        return None;
    }
    here.extend(rest.iter().cloned());
    Some(here)
}

// ------------------------------------------------------------------------------------------
// Circles
// ------------------------------------------------------------------------------------------

/// from -> to -> the first reference making that edge (`file:line `path``).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn add_edge(graph: &mut Graph, from: &str, to: &str, u: &Use) {
    let evidence = format!("{}:{} `{}`", u.file, u.line, u.written);
    let edges = graph.entry(from.to_string()).or_default();
    edges.entry(to.to_string()).or_insert(evidence);
}

/// One description per strongly connected group: a shortest circle through its first node,
/// with the reference behind each step.
fn circles(graph: &Graph) -> Vec<String> {
    let mut covered = BTreeSet::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if covered.contains(node) {
            continue;
        }
        let group: BTreeSet<String> = reachable(graph, node)
            .into_iter()
            .filter(|other| reachable(graph, other).contains(node))
            .collect();
        let Some(circle) = shortest_circle(graph, node) else {
            continue;
        };
        found.push(describe_circle(graph, &circle, &group));
        covered.extend(group);
    }
    found
}

fn describe_circle(graph: &Graph, circle: &[String], group: &BTreeSet<String>) -> String {
    let mut text = format!("circle {}", circle.join(" -> "));
    for step in circle.windows(2) {
        text += &format!(
            "\n      {} -> {}: {}",
            step[0], step[1], graph[&step[0]][&step[1]]
        );
    }
    if group.len() + 1 > circle.len() {
        let all: Vec<&str> = group.iter().map(String::as_str).collect();
        text += &format!(
            "\n      (all of {} are on circles with each other)",
            all.join(", ")
        );
    }
    text + "\n      break it: move the lower one down, or invert one of these dependencies"
}

fn successors<'g>(graph: &'g Graph, node: &str) -> impl Iterator<Item = &'g String> {
    graph.get(node).into_iter().flat_map(|edges| edges.keys())
}

/// Nodes reachable through one edge or more.
fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = successors(graph, from).cloned().collect();
    while let Some(node) = queue.pop_front() {
        if seen.insert(node.clone()) {
            queue.extend(successors(graph, &node).cloned());
        }
    }
    seen
}

/// `[start, .., start]` by breadth-first search, if `start` is on a circle.
fn shortest_circle(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in successors(graph, node) {
            if next == start {
                let mut path = vec![node.to_string()];
                let mut at = node;
                while at != start {
                    at = parent[at];
                    path.push(at.to_string());
                }
                path.reverse();
                path.push(start.to_string());
                return Some(path);
            }
            if !parent.contains_key(next.as_str()) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

// ------------------------------------------------------------------------------------------
// The reference scanner: a lexer that drops comments and literals, then path parsing
// ------------------------------------------------------------------------------------------

/// A path starting at `crate`, `self` or `super` (a grouped `use` gives one per leaf), with the
/// inline modules (`mod tests { .. }`) it sits in.
#[derive(Debug)]
struct Reference {
    path: Vec<String>,
    /// 1-based line of its last segment.
    line: usize,
    inline: Vec<String>,
}

/// The top-level modules `crate::` paths in `code` name (for the scanner's own test).
fn named_modules(code: &str) -> Vec<String> {
    let refs = references(code);
    let names: BTreeSet<String> = refs
        .iter()
        .filter(|r| r.path[0] == "crate" && r.path.len() > 1)
        .map(|r| r.path[1].clone())
        .collect();
    names.into_iter().collect()
}

fn references(code: &str) -> Vec<Reference> {
    let toks = tokens(code);
    let mut refs = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new(); // (name, brace depth of its body)
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match toks[i].text.as_str() {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if text_at(&toks, i + 2) == Some("{") => {
                inline.push((toks[i + 1].text.clone(), depth + 1));
            }
            "crate" | "self" | "super" if is_path_start(&toks, i) => {
                let (paths, next) = use_tree(&toks, i, &[]);
                let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                let found = paths.into_iter().map(|(path, line)| Reference {
                    path,
                    line,
                    inline: names.clone(),
                });
                refs.extend(found);
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

fn text_at(toks: &[Token], i: usize) -> Option<&str> {
    toks.get(i).map(|t| t.text.as_str())
}

/// `crate::`, not `pub(crate)`, and not the middle of `super::super::`.
fn is_path_start(toks: &[Token], i: usize) -> bool {
    text_at(toks, i + 1) == Some("::") && (i == 0 || text_at(toks, i - 1) != Some("::"))
}

/// Parses a path or use tree at `i` after `prefix`; returns each full path (with the line of its
/// last segment) and the index after it.
fn use_tree(toks: &[Token], mut i: usize, prefix: &[String]) -> (Vec<(Vec<String>, usize)>, usize) {
    let mut path = prefix.to_vec();
    let mut line = toks[i].line;
    while let Some(tok) = toks.get(i) {
        match tok.text.as_str() {
            "{" => return use_group(toks, i + 1, &path),
            "*" => path.push("*".to_string()),
            "self" if !path.is_empty() => {} // `a::{self, b}`: `self` is `a`
            word if is_word(word) => path.push(word.to_string()),
            _ => break,
        }
        line = tok.line;
        i += 1;
        if text_at(toks, i) != Some("::") {
            break;
        }
        i += 1;
    }
    (vec![(path, line)], i)
}

/// The items of `{ .. }` from `i` (after the brace) to its closing brace.
fn use_group(
    toks: &[Token],
    mut i: usize,
    prefix: &[String],
) -> (Vec<(Vec<String>, usize)>, usize) {
    let mut paths = Vec::new();
    while let Some(tok) = toks.get(i) {
        match tok.text.as_str() {
            "}" => return (paths, i + 1),
            "," => i += 1,
            _ => {
                let (more, next) = use_tree(toks, i, prefix);
                paths.extend(more);
                i = skip_to_comma_or_close(toks, next); // past `as name`
            }
        }
    }
    (paths, i)
}

fn skip_to_comma_or_close(toks: &[Token], mut i: usize) -> usize {
    let mut nested = 0;
    while let Some(tok) = toks.get(i) {
        match tok.text.as_str() {
            "," | "}" if nested == 0 => return i,
            "{" => nested += 1,
            "}" => nested -= 1,
            _ => {}
        }
        i += 1;
    }
    i
}

fn is_word(text: &str) -> bool {
    text.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

/// Words, `::` and single punctuation characters; no comments, strings or char literals.
fn tokens(code: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: code.chars().collect(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    lexer.run();
    lexer.out
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    out: Vec<Token>,
}

impl Lexer {
    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                '/' if self.peek(1) == Some('/') => self.line_comment(),
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => self.string(),
                '\'' => self.quote(),
                ':' if self.peek(1) == Some(':') => {
                    self.push("::".to_string());
                    self.pos += 2;
                }
                c if is_ident_char(c) => self.word(),
                c if c.is_whitespace() => {
                    self.bump();
                }
                c => {
                    self.push(c.to_string());
                    self.bump();
                }
            }
        }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn push(&mut self, text: String) {
        self.out.push(Token {
            text,
            line: self.line,
        });
    }

    /// `//`, `///` and `//!` up to the end of the line.
    fn line_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.bump();
        }
    }

    /// `/* .. */`, which nest in Rust.
    fn block_comment(&mut self) {
        let mut depth = 0;
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some('/'), Some('*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (Some('*'), Some('/')) => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return;
                    }
                }
                (Some(_), _) => {
                    self.bump();
                }
                (None, _) => return,
            }
        }
    }

    /// `".."` with backslash escapes, at its opening quote.
    fn string(&mut self) {
        self.bump();
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '"' => return,
                _ => {}
            }
        }
    }

    /// `r".."`, `r#".."#` and so on, at the opening quote, after `hashes` hashes.
    fn raw_string(&mut self, hashes: usize) {
        self.bump();
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|k| self.peek(k) == Some('#')) {
                self.pos += hashes;
                return;
            }
        }
    }

    /// A char literal (`'x'`, `'\n'`, `'"'`) is skipped; a lifetime or label (`'a`) loses only
    /// its quote.
    fn quote(&mut self) {
        let is_char = self.peek(1) == Some('\\') || self.peek(2) == Some('\'');
        self.bump();
        if !is_char {
            return;
        }
        if self.bump() == Some('\\') {
            self.bump();
        }
        while let Some(c) = self.bump() {
            if c == '\'' {
                break;
            }
        }
    }

    /// An identifier, keyword or number; or the prefix of a literal: `r"`, `r#"`, `br"`, `b"`,
    /// `c"`; or a raw identifier `r#name`.
    fn word(&mut self) {
        let start = self.pos;
        while self.peek(0).is_some_and(is_ident_char) {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        let hashes = (0..).take_while(|&k| self.peek(k) == Some('#')).count();
        match word.as_str() {
            "r" | "br" | "cr" if self.peek(hashes) == Some('"') => {
                self.pos += hashes;
                self.raw_string(hashes);
            }
            "b" | "c" if self.peek(0) == Some('"') => self.string(),
            "r" if hashes == 1 && self.peek(1).is_some_and(is_ident_char) => {
                self.pos += 1;
                self.word();
            }
            _ => self.push(word),
        }
    }
}
