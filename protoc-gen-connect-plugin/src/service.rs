//! Service code: prost-build hands every service to [`TemplateServiceGenerator`], which renders
//! it through the handlebars templates into the package's file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use handlebars::Handlebars;
use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};
use prost_build::{Comments, Method, Service, ServiceGenerator};
use prost_types::DescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::method_options::IdempotencyLevel;
use serde::Serialize;

/// Everything the service template sees. Field names are the template's variable names.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceData {
    /// Path of the runtime's module for generated code, e.g. `::connect_plugin::__codegen`.
    pub rt: String,
    pub docs: String,
    pub proto_name: String,
    pub full_name: String,
    pub const_prefix: String,
    /// Name of the flattened client, e.g. `KvDelegate`.
    pub delegate_name: String,
    /// Whether to emit the flattened client.
    pub delegate: bool,
    /// Whether to emit the plugin binding.
    pub plugin: bool,
    pub trait_name: String,
    pub server_name: String,
    pub client_name: String,
    pub plugin_name: String,
    pub plugin_id: String,
    pub plugin_version: String,
    pub methods: Vec<MethodData>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MethodData {
    pub proto_name: String,
    pub rust_name: String,
    pub const_name: String,
    pub path: String,
    pub input: String,
    pub output: String,
    pub docs: String,
    pub kind: &'static str,
    /// The runtime function that registers and calls it: `unary`, `server_streaming`,
    /// `client_streaming` or `bidi_streaming`.
    pub call: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
    pub idempotency: &'static str,
    /// The request's fields as parameters of the flattened client; `None` when the request
    /// has fields that do not flatten (messages, maps, oneofs), which then take the message.
    pub flat: Option<Vec<FlatField>>,
}

/// One request field as a parameter of the flattened client.
#[derive(Debug, Serialize)]
pub(crate) struct FlatField {
    /// The Rust field (and parameter) name.
    pub name: String,
    /// The parameter type, e.g. `impl ::core::convert::Into<::prost::alloc::string::String>`.
    pub param: String,
    /// How the parameter becomes the field: `name.into()` or `name`.
    pub value: String,
}

/// Errors found while generating, collected because prost's `ServiceGenerator` cannot fail.
pub(crate) type ErrorSink = Rc<RefCell<Vec<(String, String)>>>;

pub(crate) struct TemplateServiceGenerator {
    pub(crate) templates: Rc<Handlebars<'static>>,
    /// Every message of the request by fully qualified name (`.kv.v1.GetRequest`).
    pub(crate) messages: Rc<HashMap<String, DescriptorProto>>,
    pub(crate) delegate: bool,
    pub(crate) plugin: bool,
    pub(crate) runtime_crate: String,
    pub(crate) plugin_version: String,
    pub(crate) errors: ErrorSink,
}

impl ServiceGenerator for TemplateServiceGenerator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        match self.service_data(&service) {
            Ok(data) => match self.templates.render("service.rs", &data) {
                Ok(code) => buf.push_str(&code),
                Err(e) => self.errors.borrow_mut().push((
                    service.package.clone(),
                    format!("rendering service {}: template error: {e}", data.full_name),
                )),
            },
            Err(e) => self.errors.borrow_mut().push((service.package.clone(), e)),
        }
    }
}

impl TemplateServiceGenerator {
    fn service_data(&self, service: &Service) -> Result<ServiceData, String> {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let upper = service.proto_name.to_upper_camel_case();
        let methods = service
            .methods
            .iter()
            .map(|m| method_data(&full_name, &service.proto_name, m, &self.messages))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in methods.iter().enumerate() {
            if let Some(b) = methods[..i].iter().find(|b| b.rust_name == a.rust_name) {
                return Err(format!(
                    "service {full_name}: methods {} and {} both become the Rust method `{}`; rename one of them",
                    b.proto_name, a.proto_name, a.rust_name
                ));
            }
        }
        Ok(ServiceData {
            // Generated code names the runtime through its `__codegen` module only.
            rt: format!("{}::__codegen", self.runtime_crate),
            docs: doc_comments(&service.comments),
            proto_name: service.proto_name.clone(),
            full_name,
            const_prefix: service.proto_name.to_shouty_snake_case(),
            delegate_name: format!(
                "{}Delegate",
                service
                    .proto_name
                    .strip_suffix("Service")
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&service.proto_name)
                    .to_upper_camel_case()
            ),
            delegate: self.delegate,
            plugin: self.plugin,
            trait_name: sanitize(&upper),
            server_name: format!("{upper}Server"),
            client_name: format!("{upper}Client"),
            plugin_name: format!("{upper}Plugin"),
            plugin_id: plugin_id(&service.proto_name),
            plugin_version: self.plugin_version.clone(),
            methods,
        })
    }
}

/// connect-plugin-go's plugin name: the service name lower-cased, without a trailing
/// `Service` (`KVService` is `kv`, `Logger` is `logger`).
pub(crate) fn plugin_id(service: &str) -> String {
    let trimmed = service.strip_suffix("Service").filter(|s| !s.is_empty());
    trimmed.unwrap_or(service).to_lowercase()
}

/// The request's fields as flat parameters, if every one of them flattens.
fn flat_fields(input: &str, messages: &HashMap<String, DescriptorProto>) -> Option<Vec<FlatField>> {
    let message = messages.get(input)?;
    if !message.oneof_decl.iter().enumerate().all(|(i, _)| {
        // Only the synthetic oneofs of proto3 `optional` fields are allowed.
        message
            .field
            .iter()
            .any(|f| f.oneof_index == Some(i as i32) && f.proto3_optional())
    }) {
        return None;
    }
    message
        .field
        .iter()
        .map(|field| {
            let scalar = match field.r#type() {
                Type::Double => "f64",
                Type::Float => "f32",
                Type::Int64 | Type::Sint64 | Type::Sfixed64 => "i64",
                Type::Uint64 | Type::Fixed64 => "u64",
                Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Enum => "i32",
                Type::Uint32 | Type::Fixed32 => "u32",
                Type::Bool => "bool",
                Type::String => "::prost::alloc::string::String",
                Type::Bytes => "::prost::bytes::Bytes",
                Type::Message | Type::Group => return None,
            };
            let name = sanitize(&field.name().to_snake_case());
            let repeated = field.label() == Label::Repeated;
            let optional = field.proto3_optional();
            let convertible =
                !repeated && !optional && matches!(field.r#type(), Type::String | Type::Bytes);
            let (param, value) = if convertible {
                (
                    format!("impl ::core::convert::Into<{scalar}>"),
                    format!("{name}.into()"),
                )
            } else if repeated {
                (format!("::prost::alloc::vec::Vec<{scalar}>"), name.clone())
            } else if optional {
                (format!("::core::option::Option<{scalar}>"), name.clone())
            } else {
                (scalar.to_owned(), name.clone())
            };
            Some(FlatField { name, param, value })
        })
        .collect()
}

fn method_data(
    full_name: &str,
    service: &str,
    method: &Method,
    messages: &HashMap<String, DescriptorProto>,
) -> Result<MethodData, String> {
    let (kind, call) = match (method.client_streaming, method.server_streaming) {
        (false, false) => ("Unary", "unary"),
        (false, true) => ("ServerStreaming", "server_streaming"),
        (true, false) => ("ClientStreaming", "client_streaming"),
        (true, true) => ("BidiStreaming", "bidi_streaming"),
    };
    let idempotency = match method.options.idempotency_level() {
        IdempotencyLevel::IdempotencyUnknown => "Unknown",
        IdempotencyLevel::NoSideEffects => "NoSideEffects",
        IdempotencyLevel::Idempotent => "Idempotent",
    };
    Ok(MethodData {
        proto_name: method.proto_name.clone(),
        rust_name: sanitize(&method.proto_name.to_snake_case()),
        const_name: format!(
            "{}_{}",
            service.to_shouty_snake_case(),
            method.proto_name.to_shouty_snake_case()
        ),
        path: format!("/{full_name}/{}", method.proto_name),
        input: method.input_type.clone(),
        output: method.output_type.clone(),
        docs: doc_comments(&method.comments),
        kind,
        call,
        client_streaming: method.client_streaming,
        server_streaming: method.server_streaming,
        idempotency,
        flat: flat_fields(&method.input_proto_type, messages),
    })
}

/// Proto comments as `///` lines (prost's own sanitising: URLs and brackets made rustdoc-safe).
fn doc_comments(comments: &Comments) -> String {
    let mut docs = String::new();
    comments.append_with_indent(0, &mut docs);
    // Detached comments come out as `//` lines, which the formatter drops; keep only docs.
    docs.lines()
        .filter(|l| l.starts_with("///"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Escapes Rust keywords: raw identifiers where allowed, a trailing `_` otherwise.
pub(crate) fn sanitize(ident: &str) -> String {
    match ident {
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if"
        | "impl" | "in" | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref"
        | "return" | "static" | "struct" | "trait" | "true" | "type" | "unsafe" | "use"
        | "where" | "while" | "dyn" | "abstract" | "become" | "box" | "do" | "final" | "macro"
        | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async" | "await"
        | "try" | "gen" => format!("r#{ident}"),
        "_" | "super" | "self" | "Self" | "extern" | "crate" => format!("{ident}_"),
        _ => ident.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_ids_follow_upstream() {
        assert_eq!(plugin_id("KVService"), "kv");
        assert_eq!(plugin_id("Logger"), "logger");
        assert_eq!(plugin_id("Service"), "service");
    }

    #[test]
    fn keywords_are_escaped() {
        assert_eq!(sanitize("type"), "r#type");
        assert_eq!(sanitize("self"), "self_");
        assert_eq!(sanitize("get"), "get");
    }
}
