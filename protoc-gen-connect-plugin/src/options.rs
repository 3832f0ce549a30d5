//! Generator parameters, protoc style: `key=value` pairs separated by commas, a bare `flag`
//! meaning `flag=true`, and `\,` for a comma inside a value (protoc joins every `opt` with `,`).

use std::path::PathBuf;

/// Parsed generator parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Name of the module-tree file that mounts every package file (default `mod.rs`);
    /// `None` when `no_include` is given.
    pub include_file: Option<String>,
    /// Proto paths mapped to existing Rust paths: `(".my.pkg", "::my_crate::pkg")`.
    pub extern_paths: Vec<(String, String)>,
    /// A directory whose `*.hbs` files replace the built-in templates of the same name.
    pub templates: Option<PathBuf>,
    /// The path generated code uses for the runtime crate (default `::connect_plugin`).
    pub runtime_crate: String,
    /// The version every generated plugin binding declares (default `1.0.0`).
    pub plugin_version: String,
    /// Whether to emit the flattened `<Name>Delegate` clients (default on; `no_delegate`).
    pub delegate: bool,
    /// Whether to emit the `<Name>Plugin` bindings (default on; `no_plugin` leaves them out,
    /// for code that uses the Connect crate alone: `runtime_crate=::connect_plugin_rpc`).
    pub plugin: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            include_file: Some("mod.rs".to_owned()),
            extern_paths: Vec::new(),
            templates: None,
            runtime_crate: "::connect_plugin".to_owned(),
            plugin_version: "1.0.0".to_owned(),
            delegate: true,
            plugin: true,
        }
    }
}

const KEYS: &str = "include_file=NAME, no_include, extern_path=.proto.path=::rust::path, \
                    templates=DIR, runtime_crate=PATH, plugin_version=SEMVER, no_delegate, no_plugin";

impl Options {
    /// Parses protoc's parameter string.
    ///
    /// # Errors
    /// A message naming the bad parameter and listing the valid ones.
    pub fn parse(parameter: &str) -> Result<Self, String> {
        let mut options = Options::default();
        for item in split_unescaped(parameter) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let need = |value: Option<&str>| {
                value.filter(|v| !v.is_empty()).map(str::to_owned).ok_or_else(|| {
                    format!("parameter `{key}` needs a value, e.g. `{key}=...` (valid parameters: {KEYS})")
                })
            };
            match key {
                "include_file" => options.include_file = Some(need(value)?),
                "no_include" => options.include_file = None,
                "no_delegate" => options.delegate = false,
                "no_plugin" => options.plugin = false,
                "templates" => options.templates = Some(PathBuf::from(need(value)?)),
                "runtime_crate" => options.runtime_crate = need(value)?,
                "plugin_version" => {
                    let version = need(value)?;
                    if !is_semver(&version) {
                        return Err(format!(
                            "parameter `plugin_version={version}` is not a semantic version such as 1.2.3"
                        ));
                    }
                    options.plugin_version = version;
                }
                "extern_path" => {
                    let value = need(value)?;
                    let (proto, rust) = value.split_once('=').ok_or_else(|| {
                        format!(
                            "parameter `extern_path={value}` must look like `extern_path=.my.pkg=::my_crate::pkg`"
                        )
                    })?;
                    if !proto.starts_with('.') {
                        return Err(format!(
                            "parameter `extern_path={value}`: the proto path must be fully qualified and start with a dot, e.g. `.{proto}`"
                        ));
                    }
                    options
                        .extern_paths
                        .push((proto.to_owned(), rust.to_owned()));
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (valid parameters: {KEYS})"
                    ));
                }
            }
        }
        Ok(options)
    }
}

fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<_> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Splits on commas not preceded by a backslash, and unescapes `\,`.
fn split_unescaped(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                if let Some(item) = items.last_mut() {
                    item.push(',');
                }
            }
            ',' => items.push(String::new()),
            c => {
                if let Some(item) = items.last_mut() {
                    item.push(c);
                }
            }
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_parameter_gives_defaults() {
        assert_eq!(Options::parse("").unwrap(), Options::default());
    }

    #[test]
    fn flags_values_and_escaped_commas() {
        let o = Options::parse(
            "no_include,extern_path=.a.b=::x::y,plugin_version=2.0.1,templates=my\\,dir",
        )
        .unwrap();
        assert_eq!(o.include_file, None);
        assert_eq!(o.extern_paths, vec![(".a.b".into(), "::x::y".into())]);
        assert_eq!(o.plugin_version, "2.0.1");
        assert_eq!(o.templates, Some(PathBuf::from("my,dir")));
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let err = Options::parse("paths=source_relative").unwrap_err();
        assert!(err.contains("unknown parameter `paths`"), "{err}");
        assert!(err.contains("extern_path="), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(
            Options::parse("extern_path=a.b=::x")
                .unwrap_err()
                .contains("start with a dot")
        );
        assert!(
            Options::parse("plugin_version=1.0")
                .unwrap_err()
                .contains("semantic version")
        );
        assert!(
            Options::parse("templates")
                .unwrap_err()
                .contains("needs a value")
        );
    }
}
