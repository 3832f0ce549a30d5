//! The module-tree file: nested `pub mod` blocks that `include!` each package's file, so the
//! generated directory mounts with a single `mod`.

use std::collections::BTreeMap;

use crate::GENERATED_HEADER;

#[derive(Default)]
struct Node {
    file: Option<String>,
    children: BTreeMap<String, Node>,
}

/// Renders the tree for the given protobuf packages (`kv.v1` becomes `pub mod kv { pub mod v1 { ... } }`).
pub(crate) fn module_tree(packages: &[String]) -> String {
    let mut root = Node::default();
    for package in packages {
        let module = prost_build::Module::from_protobuf_package_name(package);
        let mut node = &mut root;
        for part in module.parts() {
            node = node.children.entry(part.to_owned()).or_default();
        }
        node.file = Some(module.to_file_name_or("_"));
    }
    let mut out = String::from(GENERATED_HEADER);
    render(&root, "", 0, &mut out);
    out
}

fn render(node: &Node, package: &str, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    if let Some(file) = &node.file {
        out.push_str(&format!("{indent}include!(\"{file}\");\n"));
    }
    for (name, child) in &node.children {
        let package = if package.is_empty() {
            name.clone()
        } else {
            format!("{package}.{name}")
        };
        out.push_str(&format!("{indent}/// Protobuf package `{package}`.\n"));
        out.push_str(&format!("{indent}pub mod {name} {{\n"));
        if child.file.is_some() {
            out.push_str(&format!(
                "{indent}    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]\n"
            ));
        }
        render(child, &package, depth + 1, out);
        out.push_str(&format!("{indent}}}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_packages_share_parents() {
        let tree = module_tree(&["a".into(), "a.b".into(), "c.d".into()]);
        assert!(
            tree.contains("/// Protobuf package `a`.\npub mod a {\n    #![allow"),
            "{tree}"
        );
        assert!(
            tree.contains("    /// Protobuf package `c.d`.\n    pub mod d {"),
            "{tree}"
        );
        assert!(
            tree.contains(
                "    include!(\"a.rs\");\n    /// Protobuf package `a.b`.\n    pub mod b {"
            ),
            "{tree}"
        );
        assert!(tree.contains("pub mod c {\n"), "{tree}");
    }
}
