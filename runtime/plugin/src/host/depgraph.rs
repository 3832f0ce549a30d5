//! The dependency graph of a platform's plugins (connect-plugin-go's `internal/depgraph`):
//! a deterministic startup order, cycle and missing-provider errors, and the impact of removing
//! a plugin.
//!
//! Nodes are plugins by runtime id, with the service types they provide and the ones they
//! require. Only dependencies `required_for_startup` order the startup; optional ones matter
//! for impact analysis alone. Beyond upstream, a required `min_version` is honoured: a provider
//! too old does not count as providing the type.
//!
//! It is pure computation over the nodes it is given: it reads no registry and starts nothing;
//! [`crate::host::platform`] builds the graph and acts on its answers.

use std::collections::{BTreeMap, BTreeSet};

use crate::plugin::ServiceDependency;
use crate::{Code, Error};

/// One plugin in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginNode {
    /// The plugin's runtime id (or any unique name).
    pub id: String,
    /// Service types it provides, with their versions (semver).
    pub provides: Vec<(String, String)>,
    /// Services it needs.
    pub requires: Vec<ServiceDependency>,
}

/// What removing a plugin would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impact {
    /// The plugin to remove.
    pub target: String,
    /// Every service type it provides.
    pub affected_services: Vec<String>,
    /// Plugins that would lose a service they cannot start without (transitively).
    pub affected_plugins: Vec<String>,
    /// Plugins that would lose only optional dependencies, or that have another provider.
    pub optional_impact: Vec<String>,
}

/// Plugins and their dependencies.
#[derive(Debug, Default, Clone)]
pub struct DependencyGraph {
    nodes: BTreeMap<String, PluginNode>,
}

impl DependencyGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a plugin.
    pub fn add(&mut self, node: PluginNode) {
        self.nodes.insert(node.id.clone(), node);
    }

    /// Removes a plugin; returns it if it was there.
    pub fn remove(&mut self, id: &str) -> Option<PluginNode> {
        self.nodes.remove(id)
    }

    /// The plugin `id`.
    pub fn get(&self, id: &str) -> Option<&PluginNode> {
        self.nodes.get(id)
    }

    /// The plugins that provide `service_type` at `min_version` or newer (any if empty).
    pub fn providers(&self, service_type: &str, min_version: &str) -> Vec<&str> {
        let min = semver::Version::parse(min_version).ok();
        self.nodes
            .values()
            .filter(|n| {
                n.provides.iter().any(|(t, v)| {
                    t == service_type
                        && match (&min, semver::Version::parse(v)) {
                            (None, _) => true,
                            (Some(min), Ok(v)) => v >= *min,
                            (Some(_), Err(_)) => false,
                        }
                })
            })
            .map(|n| n.id.as_str())
            .collect()
    }

    /// The order to start the plugins in: every plugin after the providers of what it needs
    /// to start; ties broken by id, so the order is deterministic (Kahn's algorithm).
    ///
    /// # Errors
    /// `failed_precondition` naming a required service with no provider, or the plugins
    /// caught in a dependency cycle.
    pub fn startup_order(&self) -> Result<Vec<String>, Error> {
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new(); // provider -> dependents
        let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
        for node in self.nodes.values() {
            let mut needs = BTreeSet::new();
            for dep in node.requires.iter().filter(|d| d.required_for_startup) {
                let providers = self.providers(&dep.service_type, &dep.min_version);
                let providers: Vec<&str> =
                    providers.into_iter().filter(|p| *p != node.id).collect();
                if providers.is_empty() {
                    return Err(Error::new(
                        Code::FailedPrecondition,
                        format!(
                            "plugin {} requires service {:?}{} but no provider exists",
                            node.id,
                            dep.service_type,
                            if dep.min_version.is_empty() {
                                String::new()
                            } else {
                                format!(" >= {}", dep.min_version)
                            }
                        ),
                    ));
                }
                needs.extend(providers);
            }
            waiting.insert(&node.id, needs.len());
            for provider in needs {
                edges.entry(provider).or_default().insert(&node.id);
            }
        }
        let mut ready: BTreeSet<&str> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| *id)
            .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(id) = ready.pop_first() {
            order.push(id.to_owned());
            for dependent in edges.get(id).into_iter().flatten() {
                if let Some(n) = waiting.get_mut(dependent) {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert(dependent);
                    }
                }
            }
        }
        if order.len() < self.nodes.len() {
            let stuck: Vec<&str> = waiting
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(id, _)| *id)
                .collect();
            return Err(Error::new(
                Code::FailedPrecondition,
                format!(
                    "dependency cycle detected (processed {} of {} plugins; stuck: {})",
                    order.len(),
                    self.nodes.len(),
                    stuck.join(", ")
                ),
            ));
        }
        Ok(order)
    }

    /// What removing `id` would affect (empty for an unknown plugin).
    pub fn impact(&self, id: &str) -> Impact {
        let Some(target) = self.nodes.get(id) else {
            return Impact::default();
        };
        let mut affected_services: BTreeSet<String> =
            target.provides.iter().map(|(t, _)| t.clone()).collect();
        let mut affected = BTreeSet::new();
        let mut optional = BTreeSet::new();
        let mut removed: BTreeSet<&str> = BTreeSet::from([id]);
        let mut queue: Vec<String> = affected_services.iter().cloned().collect();
        while let Some(service_type) = queue.pop() {
            for node in self.nodes.values() {
                if removed.contains(node.id.as_str()) {
                    continue;
                }
                for dep in node
                    .requires
                    .iter()
                    .filter(|d| d.service_type == service_type)
                {
                    let alternatives = self
                        .providers(&dep.service_type, &dep.min_version)
                        .into_iter()
                        .any(|p| !removed.contains(p));
                    if alternatives || !dep.required_for_startup {
                        optional.insert(node.id.clone());
                    } else if affected.insert(node.id.clone()) {
                        removed.insert(&node.id);
                        for (t, _) in &node.provides {
                            if affected_services.insert(t.clone()) {
                                queue.push(t.clone());
                            }
                        }
                    }
                }
            }
        }
        optional.retain(|p| !affected.contains(p));
        Impact {
            target: id.to_owned(),
            affected_services: affected_services.into_iter().collect(),
            affected_plugins: affected.into_iter().collect(),
            optional_impact: optional.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(service_type: &str, required: bool) -> ServiceDependency {
        ServiceDependency {
            service_type: service_type.into(),
            min_version: String::new(),
            required_for_startup: required,
            watch_for_changes: true,
        }
    }

    fn node(id: &str, provides: &[&str], requires: Vec<ServiceDependency>) -> PluginNode {
        PluginNode {
            id: id.into(),
            provides: provides
                .iter()
                .map(|t| ((*t).to_owned(), "1.0.0".to_owned()))
                .collect(),
            requires,
        }
    }

    fn example() -> DependencyGraph {
        let mut g = DependencyGraph::new();
        g.add(node("app", &[], vec![dep("cache", true)]));
        g.add(node("cache", &["cache"], vec![dep("logger", true)]));
        g.add(node("logger", &["logger"], vec![]));
        g
    }

    #[test]
    fn startup_order_is_logger_cache_app() {
        assert_eq!(
            example().startup_order().unwrap(),
            ["logger", "cache", "app"]
        );
    }

    #[test]
    fn independent_and_diamond_orders_are_deterministic() {
        let mut g = DependencyGraph::new();
        g.add(node("d", &[], vec![dep("b", true), dep("c", true)]));
        g.add(node("b", &["b"], vec![dep("a", true)]));
        g.add(node("c", &["c"], vec![dep("a", true)]));
        g.add(node("a", &["a"], vec![]));
        g.add(node("z", &[], vec![]));
        assert_eq!(g.startup_order().unwrap(), ["a", "b", "c", "d", "z"]);
        assert!(DependencyGraph::new().startup_order().unwrap().is_empty());
    }

    #[test]
    fn cycles_and_missing_providers_are_errors() {
        let mut g = DependencyGraph::new();
        g.add(node("x", &["x"], vec![dep("y", true)]));
        g.add(node("y", &["y"], vec![dep("x", true)]));
        let err = g.startup_order().unwrap_err();
        assert!(
            err.message()
                .starts_with("dependency cycle detected (processed 0 of 2 plugins"),
            "{err}"
        );
        let mut g = DependencyGraph::new();
        g.add(node("cache", &["cache"], vec![dep("logger", true)]));
        let err = g.startup_order().unwrap_err();
        assert_eq!(
            err.message(),
            "plugin cache requires service \"logger\" but no provider exists"
        );
    }

    #[test]
    fn optional_dependencies_do_not_order_and_versions_count() {
        let mut g = DependencyGraph::new();
        g.add(node("a", &[], vec![dep("metrics", false)]));
        assert_eq!(g.startup_order().unwrap(), ["a"]);
        let mut g = DependencyGraph::new();
        g.add(node("old", &["logger"], vec![]));
        g.add(node(
            "user",
            &[],
            vec![ServiceDependency {
                min_version: "2.0.0".into(),
                ..dep("logger", true)
            }],
        ));
        assert!(
            g.startup_order().is_err(),
            "logger 1.0.0 does not satisfy >= 2.0.0"
        );
    }

    #[test]
    fn impact_is_transitive_and_alternatives_soften_it() {
        let g = example();
        let impact = g.impact("logger");
        assert_eq!(impact.affected_services, ["cache", "logger"]);
        assert_eq!(impact.affected_plugins, ["app", "cache"]);
        assert!(impact.optional_impact.is_empty());

        let mut g = example();
        g.add(node("logger2", &["logger"], vec![]));
        let impact = g.impact("logger");
        assert!(impact.affected_plugins.is_empty());
        assert_eq!(impact.optional_impact, ["cache"]);

        let mut g = example();
        g.add(node("dashboard", &[], vec![dep("cache", false)]));
        assert_eq!(g.impact("logger").optional_impact, ["dashboard"]);
        assert_eq!(g.impact("nobody"), Impact::default());
    }
}
