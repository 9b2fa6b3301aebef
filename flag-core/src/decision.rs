//! The targeting rule seen from the flag: which *variant* each result position yields.
//!
//! A rule's result is a variant name, so a plain evaluation ends in a string lookup among the
//! flag's variants. The result positions that matter in practice (the root, the branches of an
//! `if` chain, the buckets of a constant `fractional`) are resolved to variant indices once, at
//! compile time; only results computed by other rules are looked up by name at evaluation.

use serde_json::Value;

use crate::hash::bucket;
use crate::rule::{
    BucketBy, Buckets, FractionalNode, Node, Scope, Val, eval, eval_bool, fractional_hash,
};

/// Whether a condition is `{"var": "targetingKey"}`: true only for a context with a key.
fn is_targeting_key(condition: &Node) -> bool {
    matches!(condition, Node::TargetingKey)
}

/// What a constant result position yields.
#[derive(Debug, Clone)]
pub(crate) enum Leaf {
    /// This variant (by index into the flag's variants).
    Variant(usize),
    /// null: the default variant.
    Default,
    /// A constant that names no variant: an error result when reached.
    Invalid(Value),
}

#[derive(Debug, Clone)]
pub(crate) enum Decision {
    Leaf(Leaf),
    /// `if` chain: the first true condition's branch, else the last.
    If {
        branches: Box<[(Node, Decision)]>,
        otherwise: Box<Decision>,
    },
    /// `fractional` with constant buckets, by flagKey + targetingKey or a constant bucketBy.
    Fractional {
        node: Box<FractionalNode>,
        leaves: Box<[Leaf]>,
    },
    /// Any other rule: evaluate, then look the result up by name.
    Rule(Node),
}

/// The outcome of a decision: a precomputed leaf, or a value still to be mapped to a variant.
pub(crate) enum Outcome<'a> {
    Leaf(&'a Leaf),
    /// No bucket could be chosen (no targeting key): as null.
    Null,
    Value(Val<'a>),
}

impl Decision {
    /// Builds the decision tree of a compiled rule; `leaf` maps a constant to a variant.
    pub(crate) fn build(node: Node, leaf: &impl Fn(&Value) -> Leaf) -> Decision {
        match node {
            Node::Const(value) => Decision::Leaf(leaf(&value)),
            Node::If(args) => {
                let mut args = args.into_vec();
                let otherwise = if args.len() % 2 == 1 {
                    args.pop()
                        .map_or(Decision::Leaf(Leaf::Default), |n| Decision::build(n, leaf))
                } else {
                    Decision::Leaf(Leaf::Default)
                };
                let mut branches = Vec::with_capacity(args.len() / 2);
                let mut iter = args.into_iter();
                while let (Some(condition), Some(then)) = (iter.next(), iter.next()) {
                    branches.push((condition, Decision::build(then, leaf)));
                }
                Decision::If {
                    branches: branches.into(),
                    otherwise: Box::new(otherwise),
                }
            }
            Node::Fractional(fractional)
                if matches!(fractional.buckets, Buckets::Constant { .. })
                    && !matches!(fractional.bucket_by, BucketBy::Dynamic(_)) =>
            {
                let leaves: Box<[Leaf]> = match &fractional.buckets {
                    Buckets::Constant { variants, .. } => variants.iter().map(leaf).collect(),
                    Buckets::Dynamic(_) => Box::default(),
                };
                Decision::Fractional {
                    node: fractional,
                    leaves,
                }
            }
            other => Decision::Rule(other),
        }
    }

    /// Constant results that name no variant, wherever they sit (including those reached
    /// through `$ref`, which a check of the JSON alone cannot see).
    pub(crate) fn invalid_results(&self) -> Vec<&Value> {
        let mut found = Vec::new();
        let mut pending = vec![self];
        while let Some(decision) = pending.pop() {
            match decision {
                Decision::Leaf(Leaf::Invalid(value)) => found.push(value),
                Decision::Leaf(_) | Decision::Rule(_) => {}
                Decision::If {
                    branches,
                    otherwise,
                } => {
                    pending.extend(branches.iter().map(|(_, then)| then));
                    pending.push(otherwise);
                }
                Decision::Fractional { leaves, .. } => {
                    found.extend(leaves.iter().filter_map(|leaf| match leaf {
                        Leaf::Invalid(value) => Some(value),
                        _ => None,
                    }));
                }
            }
        }
        found
    }

    /// The variants (indices) this decision can yield whatever the context, `default` standing
    /// for null; `None` when a rule computes a result (anything may come out) or a constant
    /// names no variant.
    pub(crate) fn reachable(
        &self,
        default: Option<usize>,
    ) -> Option<std::collections::BTreeSet<usize>> {
        let mut found = std::collections::BTreeSet::new();
        // Each decision with whether the context surely has a targeting key there (a branch
        // under `{"var": "targetingKey"}`, as the rollout endpoint writes 100 %).
        let mut pending = vec![(self, false)];
        let leaf = |leaf: &Leaf| match leaf {
            Leaf::Variant(index) => Some(*index),
            Leaf::Default => default,
            Leaf::Invalid(_) => None,
        };
        while let Some((decision, keyed)) = pending.pop() {
            match decision {
                Decision::Leaf(l) => {
                    found.insert(leaf(l)?);
                }
                Decision::Rule(_) => return None,
                Decision::If {
                    branches,
                    otherwise,
                } => {
                    pending.extend(
                        branches
                            .iter()
                            .map(|(condition, then)| (then, keyed || is_targeting_key(condition))),
                    );
                    pending.push((otherwise, keyed));
                }
                Decision::Fractional { node, leaves } => {
                    let Buckets::Constant { ends, .. } = &node.buckets else {
                        return None;
                    };
                    // A bucket of weight 0 is never chosen.
                    let mut start = 0;
                    for (end, l) in ends.iter().zip(leaves.iter()) {
                        if *end > start {
                            found.insert(leaf(l)?);
                        }
                        start = *end;
                    }
                    // Without a targeting key no bucket is chosen: null, the default.
                    if !(keyed && matches!(node.bucket_by, BucketBy::FlagAndTargetingKey)) {
                        found.insert(default?);
                    }
                }
            }
        }
        Some(found)
    }

    pub(crate) fn decide<'a>(&'a self, scope: Scope<'a>) -> Outcome<'a> {
        let mut current = self;
        loop {
            match current {
                Decision::Leaf(leaf) => return Outcome::Leaf(leaf),
                Decision::If {
                    branches,
                    otherwise,
                } => {
                    current = branches
                        .iter()
                        .find(|(condition, _)| eval_bool(condition, scope))
                        .map_or(otherwise.as_ref(), |(_, then)| then);
                }
                Decision::Fractional { node, leaves } => {
                    // `build` only makes this decision for constant buckets.
                    let Buckets::Constant { ends, total, .. } = &node.buckets else {
                        return Outcome::Null;
                    };
                    // One bucket is the answer, with or without anything to bucket by.
                    if let [only] = leaves.as_ref()
                        && *total > 0
                    {
                        return Outcome::Leaf(only);
                    }
                    let Some(hash) = fractional_hash(&node.bucket_by, scope) else {
                        scope.failed();
                        return Outcome::Null;
                    };
                    let point = bucket(hash, *total);
                    return match ends.iter().position(|end| point < *end) {
                        Some(index) => Outcome::Leaf(&leaves[index]),
                        None => Outcome::Null,
                    };
                }
                Decision::Rule(node) => return Outcome::Value(eval(node, scope)),
            }
        }
    }
}
