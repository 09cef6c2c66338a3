//! What every operation of a service's OpenAPI document has because of the shared extractors
//! and layers it goes through, rather than because of its own handler: the problem answers of
//! authentication, body limits, timeouts and parameter parsing, and the headers every route
//! reads or writes. A service lists them once in a [`Shared`] modifier, next to the code that
//! produces them, instead of repeating them in every `#[utoipa::path]`.

use utoipa::{
    Modify, PartialSchema,
    openapi::{
        Content, Header, OpenApi, RefOr, Required, Response,
        path::{Operation, ParameterBuilder, ParameterIn},
        schema::{ObjectBuilder, Ref, SchemaFormat, Type},
    },
};

use schemas::Role;
use utoipa::openapi::security::SecurityRequirement;

use crate::problem::{FieldError, PROBLEM_JSON, Problem};

/// A header every operation takes or every answer of a kind carries.
#[derive(Debug, Clone, Copy)]
pub struct SharedHeader {
    name: &'static str,
    description: &'static str,
    /// The string's format (`uuid`), when it has one.
    format: Option<&'static str>,
    /// A regular expression the whole value matches, when there is one.
    pattern: Option<&'static str>,
    /// Only writes read it (`Idempotency-Key`): not declared on GET, HEAD or OPTIONS.
    writes_only: bool,
}

impl SharedHeader {
    /// A header whose value is free text.
    pub const fn new(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            format: None,
            pattern: None,
            writes_only: false,
        }
    }

    /// A header whose value is a UUID.
    pub const fn uuid(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            format: Some("uuid"),
            pattern: None,
            writes_only: false,
        }
    }

    /// The same header, read by writes only: a request header of the [`Shared`] part of a
    /// document is then declared on every operation but GET, HEAD and OPTIONS.
    #[must_use]
    pub const fn writes_only(mut self) -> Self {
        self.writes_only = true;
        self
    }

    /// The same header, whose value matches `pattern`.
    #[must_use]
    pub const fn matching(mut self, pattern: &'static str) -> Self {
        self.pattern = Some(pattern);
        self
    }

    fn schema(&self) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(
                self.format
                    .map(|format| SchemaFormat::Custom(format.to_owned())),
            )
            .pattern(self.pattern)
    }
}

/// The shared part of every operation of a document: added to each operation, except where its
/// own annotation already describes the same status, parameter or header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shared {
    /// `(status, description)` of problem answers any operation can give.
    pub problems: &'static [(u16, &'static str)],
    /// Request headers every operation reads.
    pub request_headers: &'static [SharedHeader],
    /// Headers every 2xx answer may carry.
    pub success_headers: &'static [SharedHeader],
    /// Headers a problem answer of one status carries: `(status, header)`.
    pub problem_headers: &'static [(u16, SharedHeader)],
}

/// The OpenAPI description of a problem answer: `application/problem+json` with the
/// [`Problem`] schema.
pub fn problem_response(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        PROBLEM_JSON.to_owned(),
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    response
}

fn response_header(header: &SharedHeader) -> Header {
    let mut built = Header::new(header.schema());
    built.description = Some(header.description.to_owned());
    built
}

/// Every operation of `openapi`, whatever its method.
pub fn operations_mut(openapi: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

impl Shared {
    /// Adds the shared parts to `operation`; `write`: it is not a GET, HEAD or OPTIONS.
    fn apply(&self, operation: &mut Operation, write: bool) {
        let responses = &mut operation.responses.responses;
        for (status, description) in self.problems {
            responses
                .entry(status.to_string())
                .or_insert_with(|| RefOr::T(problem_response(description)));
        }
        for (status, header) in self.problem_headers {
            if let Some(RefOr::T(response)) = responses.get_mut(&status.to_string()) {
                response
                    .headers
                    .entry(header.name.to_owned())
                    .or_insert_with(|| response_header(header));
            }
        }
        for (status, response) in responses.iter_mut() {
            let (RefOr::T(response), true) = (response, status.starts_with('2')) else {
                continue;
            };
            for header in self.success_headers {
                response
                    .headers
                    .entry(header.name.to_owned())
                    .or_insert_with(|| response_header(header));
            }
        }
        let parameters = operation.parameters.get_or_insert_with(Vec::new);
        for header in self.request_headers {
            if header.writes_only && !write {
                continue;
            }
            let declared = parameters.iter().any(|parameter| {
                parameter.parameter_in == ParameterIn::Header
                    && parameter.name.eq_ignore_ascii_case(header.name)
            });
            if !declared {
                parameters.push(
                    ParameterBuilder::new()
                        .name(header.name)
                        .parameter_in(ParameterIn::Header)
                        .required(Required::False)
                        .description(Some(header.description))
                        .schema(Some(header.schema()))
                        .build(),
                );
            }
        }
    }
}

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for (operation, write) in [
                (&mut item.get, false),
                (&mut item.head, false),
                (&mut item.options, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
                (&mut item.trace, false),
            ] {
                if let Some(operation) = operation {
                    self.apply(operation, write);
                }
            }
        }
        if !self.problems.is_empty() {
            let components = openapi.components.get_or_insert_with(Default::default);
            for (name, schema) in [
                ("Problem", <Problem as PartialSchema>::schema()),
                ("FieldError", <FieldError as PartialSchema>::schema()),
            ] {
                components.schemas.entry(name.to_owned()).or_insert(schema);
            }
        }
    }
}

/// The roles each operation admits: `(method, path template, roles)`, the roles being the
/// constant the route's handler checks (e.g. `Bookers::ALLOWED`), so that the document cannot
/// say other than the code enforces. The name of the security scheme whose requirement
/// carries the roles as scopes is `oidc` (`crate::http::BearerAuth`).
#[derive(Debug, Clone, Copy)]
pub struct RouteRoles {
    pub routes: &'static [(&'static str, &'static str, &'static [Role])],
}

/// The extension that lists an operation's roles.
pub const ROLES_EXTENSION: &str = "x-fm-roles";

impl Modify for RouteRoles {
    fn modify(&self, openapi: &mut OpenApi) {
        for (method, path, roles) in self.routes {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let operation = match *method {
                "get" => &mut item.get,
                "put" => &mut item.put,
                "post" => &mut item.post,
                "delete" => &mut item.delete,
                "patch" => &mut item.patch,
                _ => continue,
            };
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
            operation
                .extensions
                .get_or_insert_with(Default::default)
                .insert(ROLES_EXTENSION.to_owned(), serde_json::json!(names));
            if let Some(security) = &mut operation.security {
                let anyone = SecurityRequirement::new("oidc", Vec::<String>::new());
                if let Some(oidc) = security.iter_mut().find(|r| **r == anyone) {
                    *oidc = SecurityRequirement::new("oidc", names.clone());
                }
            }
            let sentence = format!(
                "Roles: {} (a token of another role gets 403).",
                names.join(", ")
            );
            operation.description = Some(match operation.description.take() {
                Some(description) if !description.is_empty() => {
                    format!("{description}\n\n{sentence}")
                }
                _ => sentence,
            });
        }
    }
}

/// The roles `document` (a served `/openapi.json`) declares for each operation:
/// `((method, path), roles)`; an operation that declares none has an empty list. Tests compare
/// it with what the service enforces.
pub fn declared_roles(document: &serde_json::Value) -> Vec<((String, String), Vec<String>)> {
    let mut found = Vec::new();
    let Some(paths) = document["paths"].as_object() else {
        return found;
    };
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, operation) in item {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let roles = operation[ROLES_EXTENSION]
                .as_array()
                .map(|roles| {
                    roles
                        .iter()
                        .filter_map(|role| role.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            found.push(((method.clone(), path.clone()), roles));
        }
    }
    found
}

/// The response `document` (a served `/openapi.json`) declares for `status` of the operation
/// `method` `template` (`"post"`, `"/bookings/{id}/cancel"`): what an answer must match. Tests
/// use it to hold every answer a service gives to its own document.
pub fn declared_response<'a>(
    document: &'a serde_json::Value,
    method: &str,
    template: &str,
    status: u16,
) -> Option<&'a serde_json::Value> {
    document["paths"][template][method]["responses"]
        .get(status.to_string())
        .filter(|response| response.is_object())
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi as _;

    use super::*;

    /// Reads something.
    #[utoipa::path(get, path = "/things/{id}", params(("id" = String, Path)), responses(
        (status = 200, description = "The thing"),
        (status = 404, description = "No such thing, precisely", body = Problem, content_type = "application/problem+json"),
    ))]
    #[allow(dead_code)]
    fn read_thing() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(read_thing))]
    struct Doc;

    const SHARED: Shared = Shared {
        problems: &[(401, "No valid bearer token"), (404, "Not found")],
        request_headers: &[
            SharedHeader::new("Consistency-Token", "Wait for this write"),
            SharedHeader::uuid("Correlation-Id", "The flow"),
            SharedHeader::new("Idempotency-Key", "A retry token").matching("^[!-~]{1,200}$"),
            SharedHeader::new("Write-Only", "Read by writes only").writes_only(),
        ],
        success_headers: &[SharedHeader::new("ETag", "The version")],
        problem_headers: &[(401, SharedHeader::new("WWW-Authenticate", "Bearer"))],
    };

    #[test]
    fn shared_parts_are_added_and_a_route_s_own_description_is_kept() {
        let mut openapi = Doc::openapi();
        SHARED.modify(&mut openapi);
        let document = serde_json::to_value(&openapi).expect("serialises");
        let operation = &document["paths"]["/things/{id}"]["get"];
        let responses = &operation["responses"];
        assert_eq!(
            responses["401"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        assert!(responses["401"]["headers"]["WWW-Authenticate"].is_object());
        assert_eq!(responses["404"]["description"], "No such thing, precisely");
        assert!(responses["200"]["headers"]["ETag"].is_object());
        assert!(responses["404"]["headers"].get("ETag").is_none());
        assert_eq!(operation["parameters"][1]["name"], "Consistency-Token");
        assert_eq!(operation["parameters"][2]["schema"]["format"], "uuid");
        assert_eq!(
            operation["parameters"][3]["schema"]["pattern"],
            "^[!-~]{1,200}$"
        );
        assert!(
            operation["parameters"].get(4).is_none(),
            "a writes-only header is not declared on a GET"
        );
        assert!(document["components"]["schemas"]["Problem"].is_object());
        assert!(document["components"]["schemas"]["FieldError"].is_object());
        assert!(declared_response(&document, "get", "/things/{id}", 401).is_some());
        assert!(declared_response(&document, "get", "/things/{id}", 403).is_none());
        assert!(declared_response(&document, "post", "/things/{id}", 401).is_none());
    }

    #[test]
    fn route_roles_are_declared_as_extension_scopes_and_sentence() {
        let mut openapi = Doc::openapi();
        crate::http::BearerAuth.modify(&mut openapi);
        let operation = openapi
            .paths
            .paths
            .get_mut("/things/{id}")
            .and_then(|item| item.get.as_mut())
            .expect("the operation");
        operation.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("oidc", Vec::<String>::new()),
        ]);
        RouteRoles {
            routes: &[("get", "/things/{id}", &[Role::Director, Role::Ops])],
        }
        .modify(&mut openapi);
        let document = serde_json::to_value(&openapi).expect("serialises");
        let operation = &document["paths"]["/things/{id}"]["get"];
        assert_eq!(
            operation[ROLES_EXTENSION],
            serde_json::json!(["director", "ops"])
        );
        assert_eq!(
            operation["security"][1]["oidc"],
            serde_json::json!(["director", "ops"])
        );
        assert!(
            operation["description"]
                .as_str()
                .expect("a description")
                .ends_with("Roles: director, ops (a token of another role gets 403).")
        );
        assert_eq!(
            declared_roles(&document),
            vec![(
                ("get".to_owned(), "/things/{id}".to_owned()),
                vec!["director".to_owned(), "ops".to_owned()]
            )]
        );
    }
}
