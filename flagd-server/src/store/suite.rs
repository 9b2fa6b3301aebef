//! One suite, two backends: every test here runs against SQLite (in memory) and PostgreSQL (a
//! scratch schema of its own, so the tests run in parallel; skipped with one line when there is
//! no database, unless `FLAGD_REQUIRE_POSTGRES=1`).

use serde_json::json;

use super::*;
use crate::testing::ScratchSchema;

/// A store under test, keeping its scratch schema alive.
struct Backend {
    store: Box<dyn FlagStore>,
    _schema: Option<ScratchSchema>,
}

impl std::ops::Deref for Backend {
    type Target = dyn FlagStore;

    fn deref(&self) -> &(dyn FlagStore + 'static) {
        self.store.as_ref()
    }
}

fn sqlite(_test: &str) -> Option<Backend> {
    Some(Backend {
        store: Box::new(SqliteStore::in_memory(1).unwrap()),
        _schema: None,
    })
}

fn postgres(test: &str) -> Option<Backend> {
    let schema = ScratchSchema::create(test)?;
    let store = PostgresStore::connect(&schema.url(), 1).unwrap();
    Some(Backend {
        store: Box::new(store),
        _schema: Some(schema),
    })
}

/// Runs each named test body against both stores.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test] fn $name() { if let Some(store) = super::sqlite(stringify!($name)) { super::$name(&store) } })*
        }
        mod on_postgres {
            $(#[test] fn $name() { if let Some(store) = super::postgres(stringify!($name)) { super::$name(&store) } })*
        }
    };
}

both_stores!(
    a_fresh_store_has_the_default_environment,
    commits_bump_versions_and_log_changes,
    a_failed_precondition_changes_nothing,
    deleting_an_environment_keeps_its_history_and_revokes_its_tokens,
    ramp_saves_compare_and_set,
    tokens_round_trip_and_the_last_admin_stays,
    the_resume_log_leaves_out_audit_events,
    settings_and_audit_filters_round_trip,
    the_last_change_of_a_key_wins_within_a_commit,
    large_commits_keep_their_order,
    fenced_commits_land_with_their_ramp_or_not_at_all,
    sources_bind_save_by_generation_and_go_with_their_environment,
    usage_adds_up_per_hour_and_is_pruned,
    environments_carry_the_digest_of_their_last_commit,
);

fn environments_carry_the_digest_of_their_last_commit(store: &Backend) {
    // A fresh environment's version was not made by a commit: no recorded digest.
    assert_eq!(store.environment("default").unwrap().unwrap().digest, None);
    let settings = EnvironmentSettings {
        metadata: serde_json::from_value(json!({"team": "web"})).unwrap(),
        evaluators: BTreeMap::new(),
    };
    for changes in [
        vec![upsert("a", "on", None), upsert("b", "off", None)],
        vec![FlagChange::Delete {
            key: "a".into(),
            expected_version: None,
        }],
    ] {
        let commit = store
            .commit("default", &changes, Some(&settings), &by("a"))
            .unwrap();
        let recorded = store.environment("default").unwrap().unwrap();
        assert_eq!(recorded.version, commit.version);
        // The same digest as the commit's records and as the one read back from the log.
        assert_eq!(
            recorded.digest.as_deref(),
            Some(commit_digest(&commit.changes).as_str())
        );
        let logged: Vec<_> = store
            .changes_since("default", commit.version - 1, 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.version == commit.version)
            .collect();
        assert_eq!(recorded.digest, Some(commit_digest(&logged)));
        let listed = store.environments().unwrap();
        assert_eq!(listed[0].digest, recorded.digest);
    }
}

fn usage_adds_up_per_hour_and_is_pruned(store: &Backend) {
    let row = |flag: &str, variant: &str, at: i64, count: i64| UsageRecord {
        environment: "default".into(),
        flag: flag.into(),
        variant: variant.into(),
        hour: hour_of(at),
        count,
        last_at: at,
    };
    let h = 500_000 * 3600; // a whole hour
    store
        .add_usage(&[
            row("a", "on", h + 10, 5),
            row("a", "off", h + 20, 1),
            row("b", "on", h + 7200, 2),
        ])
        .unwrap();
    // Another replica's counts for the same hour add up; the latest time wins.
    store.add_usage(&[row("a", "on", h + 5, 3)]).unwrap();
    let a = store.usage("default", "a", h).unwrap();
    assert_eq!(
        a.iter()
            .map(|r| (r.variant.as_str(), r.hour, r.count, r.last_at))
            .collect::<Vec<_>>(),
        vec![("off", h, 1, h + 20), ("on", h, 8, h + 10)]
    );
    assert!(store.usage("default", "a", h + 3600).unwrap().is_empty());
    let summary = store.usage_summary("default", h + 3600).unwrap();
    assert_eq!(
        summary
            .iter()
            .map(|s| (s.flag.as_str(), s.last_at, s.recent))
            .collect::<Vec<_>>(),
        vec![("a", h + 20, 0), ("b", h + 7200, 2)]
    );
    // The hour of `a` ended at h + 3600: pruned at that time, not before.
    assert_eq!(store.prune_usage(h + 3599).unwrap(), 0);
    assert_eq!(store.prune_usage(h + 3600).unwrap(), 2);
    assert_eq!(store.usage_summary("default", h).unwrap().len(), 1);
    // Counts saturate: a row never leaves the 64-bit range, so sums over rows stay exact.
    for _ in 0..3 {
        store.add_usage(&[row("big", "on", h, i64::MAX)]).unwrap();
    }
    let big = store.usage("default", "big", h).unwrap();
    assert_eq!(big[0].count, MAX_USAGE_COUNT);
    let summary = store.usage_summary("default", h).unwrap();
    assert_eq!(
        summary.iter().find(|s| s.flag == "big").unwrap().recent,
        MAX_USAGE_COUNT
    );
}

fn sources_bind_save_by_generation_and_go_with_their_environment(store: &Backend) {
    let spec = json!({"repository": "file:///r", "path": "p.json"});
    assert!(matches!(
        store.bind_source("nope", &spec, &json!({})),
        Err(StoreError::UnknownEnvironment(_))
    ));
    let first = store
        .bind_source("default", &spec, &json!({"state": "pending"}))
        .unwrap();
    let baseline = json!({"flags": {}});
    assert!(
        store
            .save_source_status(
                "default",
                first,
                &json!({"state": "synced"}),
                Some(&baseline)
            )
            .unwrap()
    );
    let stored = store.source("default").unwrap().unwrap();
    assert_eq!(stored.status, json!({"state": "synced"}));
    assert_eq!(
        store.source_baseline("default").unwrap(),
        Some(baseline.clone())
    );
    // A status without a baseline keeps the stored one.
    assert!(
        store
            .save_source_status("default", first, &json!({"state": "failed"}), None)
            .unwrap()
    );
    assert_eq!(store.source_baseline("default").unwrap(), Some(baseline));
    // Rebinding starts over: a new generation, no baseline; the old generation's saves are
    // dropped.
    let second = store
        .bind_source("default", &spec, &json!({"state": "pending"}))
        .unwrap();
    assert_eq!(second, first + 1);
    assert!(
        !store
            .save_source_status("default", first, &json!({"state": "stale"}), None)
            .unwrap()
    );
    let stored = store.source("default").unwrap().unwrap();
    assert_eq!(stored.status, json!({"state": "pending"}));
    assert_eq!(store.source_baseline("default").unwrap(), None);
    assert_eq!(store.sources().unwrap().len(), 1);
    // Deleting the environment unbinds it; unbinding twice says so.
    store.create_environment("staging", &by("x")).unwrap();
    store.bind_source("staging", &spec, &json!({})).unwrap();
    store.delete_environment("staging", true, &by("x")).unwrap();
    assert_eq!(store.source("staging").unwrap(), None);
    assert!(store.unbind_source("default").unwrap());
    assert!(!store.unbind_source("default").unwrap());
    assert!(store.sources().unwrap().is_empty());
}

fn fenced_commits_land_with_their_ramp_or_not_at_all(store: &Backend) {
    store
        .commit("default", &[upsert("f", "off", None)], None, &by("x"))
        .unwrap();
    let mut ramp = RampRecord {
        id: None,
        environment: "default".into(),
        flag: "f".into(),
        state: "active".into(),
        next_at: Some(5),
        updated_at: 1,
        revision: 0,
        definition: json!({"step": 0}),
    };
    ramp.id = Some(store.save_ramp(&ramp).unwrap());
    // Two schedulers read the ramp at revision 0 and both try to apply step 1.
    let mut first = ramp.clone();
    first.definition = json!({"step": 1});
    let commit = store
        .commit_fenced("default", &[upsert("f", "on", None)], &by("ramp"), &first)
        .unwrap();
    assert_eq!(commit.version, 2);
    let mut second = ramp;
    second.definition = json!({"step": 1, "by": "the stale one"});
    let refused = store
        .commit_fenced("default", &[upsert("f", "off", None)], &by("ramp"), &second)
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::RampConflict { expected: 0, .. }),
        "{refused}"
    );
    // Nothing of the refused one landed: not the flag, not a version, not the ramp.
    assert_eq!(
        store.flag("default", "f").unwrap().unwrap().flag,
        flag("on")
    );
    assert_eq!(store.environment("default").unwrap().unwrap().version, 2);
    let stored = &store.ramps(&RampQuery::default()).unwrap()[0];
    assert_eq!(
        (stored.revision, &stored.definition),
        (1, &json!({"step": 1}))
    );
    assert!(store.changes_since("default", 2, 10).unwrap().is_empty());
}

fn the_last_change_of_a_key_wins_within_a_commit(store: &Backend) {
    store
        .commit("default", &[upsert("a", "off", None)], None, &by("x"))
        .unwrap();
    let delete = |key: &str| FlagChange::Delete {
        key: key.into(),
        expected_version: None,
    };
    let commit = store
        .commit(
            "default",
            &[
                upsert("a", "on", None),
                delete("a"),
                upsert("b", "on", None),
                upsert("b", "off", None),
            ],
            None,
            &by("x"),
        )
        .unwrap();
    assert!(store.flag("default", "a").unwrap().is_none());
    assert_eq!(
        store.flag("default", "b").unwrap().unwrap().flag,
        flag("off")
    );
    let operations: Vec<&str> = commit
        .changes
        .iter()
        .map(|r| r.operation.as_str())
        .collect();
    assert_eq!(operations, ["update", "delete", "create", "create"]);
    assert_eq!(
        store.changes_since("default", 1, 10).unwrap(),
        commit.changes
    );
}

fn large_commits_keep_their_order(store: &Backend) {
    let changes: Vec<FlagChange> = (0..500)
        .map(|i| upsert(&format!("f{i:03}"), "on", None))
        .collect();
    let commit = store.commit("default", &changes, None, &by("x")).unwrap();
    assert_eq!(store.flags("default").unwrap().len(), 500);
    let logged = store.changes_since("default", 0, 1000).unwrap();
    assert_eq!(logged, commit.changes);
    let keys: Vec<&str> = logged.iter().filter_map(|r| r.flag.as_deref()).collect();
    assert_eq!(keys.first(), Some(&"f000"));
    assert_eq!(keys.last(), Some(&"f499"));
    assert!(logged.windows(2).all(|w| w[0].id < w[1].id));
}

fn by(actor: &str) -> Attribution {
    Attribution {
        actor: actor.to_owned(),
        message: Some("why".to_owned()),
        at: 100,
    }
}

fn flag(default: &str) -> Flag {
    serde_json::from_value(json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default}))
        .unwrap()
}

fn upsert(key: &str, default: &str, expected: Option<i64>) -> FlagChange {
    FlagChange::Upsert {
        key: key.into(),
        flag: flag(default),
        expected_version: expected,
    }
}

fn token(id: &str, role: Role, environment: Option<&str>, hash: u8) -> TokenRecord {
    TokenRecord {
        environments: None,
        id: id.into(),
        name: format!("{id} name"),
        role,
        environment: environment.map(str::to_owned),
        hash: [hash; 32],
        created_at: 1,
        revoked_at: None,
    }
}

fn a_fresh_store_has_the_default_environment(store: &Backend) {
    let envs = store.environments().unwrap();
    assert_eq!(envs.len(), 1);
    assert_eq!((envs[0].name.as_str(), envs[0].version), ("default", 0));
    assert!(
        store
            .insert_first_token(&token("tok_first", Role::Admin, None, 9))
            .unwrap()
    );
    assert_eq!(store.tokens().unwrap()[0].id, "tok_first");
}

fn commits_bump_versions_and_log_changes(store: &Backend) {
    let first = store
        .commit(
            "default",
            &[upsert("f", "off", Some(0))],
            None,
            &by("alice"),
        )
        .unwrap();
    assert_eq!(first.version, 1);
    let second = store
        .commit("default", &[upsert("f", "on", Some(1))], None, &by("bob"))
        .unwrap();
    assert_eq!(second.version, 2);
    let stale = store
        .commit(
            "default",
            &[upsert("f", "off", Some(1))],
            None,
            &by("carol"),
        )
        .unwrap_err();
    assert!(
        matches!(
            stale,
            StoreError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{stale}"
    );
    let stored = store.flag("default", "f").unwrap().unwrap();
    assert_eq!((stored.version, stored.updated_by.as_str()), (2, "bob"));
    assert_eq!(stored.flag, flag("on"));
    let log = store
        .changes(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (&log[0].operation, log[0].actor.as_str()),
        (&Operation::Update, "bob")
    );
    assert_eq!(log[0].before["defaultVariant"], "off");
    assert_eq!(log[0].after["defaultVariant"], "on");
    assert_eq!(log[1].operation, Operation::Create);
    // What the commit returned is what the log reads back: the digest a stream client resumes
    // with is the same whichever way the server learns of the commit.
    let logged = store.changes_since("default", 1, 10).unwrap();
    assert_eq!(logged, second.changes);
    assert_eq!(commit_digest(&logged), commit_digest(&second.changes));
    assert_ne!(
        commit_digest(&first.changes),
        commit_digest(&second.changes)
    );
}

fn a_failed_precondition_changes_nothing(store: &Backend) {
    let changes = [
        upsert("a", "on", None),
        FlagChange::Delete {
            key: "missing".into(),
            expected_version: None,
        },
    ];
    assert!(matches!(
        store.commit("default", &changes, None, &by("x")),
        Err(StoreError::UnknownFlag { .. })
    ));
    assert!(store.flags("default").unwrap().is_empty());
    assert_eq!(store.environment("default").unwrap().unwrap().version, 0);
    assert!(matches!(
        store.commit("nowhere", &[upsert("a", "on", None)], None, &by("x")),
        Err(StoreError::UnknownEnvironment(_))
    ));
}

fn deleting_an_environment_keeps_its_history_and_revokes_its_tokens(store: &Backend) {
    store.create_environment("staging", &by("a")).unwrap();
    assert!(matches!(
        store.create_environment("staging", &by("a")),
        Err(StoreError::EnvironmentExists(_))
    ));
    store
        .commit("staging", &[upsert("f", "on", None)], None, &by("a"))
        .unwrap();
    store
        .insert_token(&token("tok_1", Role::Sdk, Some("staging"), 7))
        .unwrap();
    assert!(matches!(
        store.delete_environment("staging", false, &by("a")),
        Err(StoreError::EnvironmentNotEmpty { flags: 1, .. })
    ));
    store.delete_environment("staging", true, &by("a")).unwrap();
    assert!(store.environment("staging").unwrap().is_none());
    let log = store
        .changes(&AuditQuery {
            environment: Some("staging".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(log[0].operation, Operation::DeleteEnvironment);
    assert_eq!(log[0].before["flags"]["f"]["defaultVariant"], "on");
    assert!(store.tokens().unwrap()[0].revoked_at.is_some());
    // Re-created, it continues the version sequence.
    let again = store.create_environment("staging", &by("a")).unwrap();
    assert!(again.version > 2, "version {}", again.version);
    // A scoped admin's view of the log: only its environments.
    let scoped = |environments: &[&str]| {
        store
            .changes(&AuditQuery {
                environments: Some(environments.iter().map(|e| (*e).to_owned()).collect()),
                limit: 100,
                ..Default::default()
            })
            .unwrap()
    };
    let staging = scoped(&["staging"]);
    assert!(staging.len() >= 3);
    assert!(staging.iter().all(|c| c.environment == "staging"));
    assert!(scoped(&["elsewhere"]).is_empty());
    assert!(scoped(&[]).is_empty());
}

fn ramp_saves_compare_and_set(store: &Backend) {
    let mut ramp = RampRecord {
        id: None,
        environment: "default".into(),
        flag: "f".into(),
        state: "active".into(),
        next_at: Some(50),
        updated_at: 1,
        revision: 0,
        definition: json!({"step": 0}),
    };
    let id = store.save_ramp(&ramp).unwrap();
    ramp.id = Some(id);
    let read = store.ramps(&RampQuery::default()).unwrap();
    assert_eq!(read, vec![ramp.clone()]);
    // Two schedulers read revision 0; only the first save wins.
    ramp.definition = json!({"step": 1});
    store.save_ramp(&ramp).unwrap();
    let loser = store.save_ramp(&ramp).unwrap_err();
    assert!(
        matches!(loser, StoreError::RampConflict { expected: 0, .. }),
        "{loser}"
    );
    let stored = &store.ramps(&RampQuery::default()).unwrap()[0];
    assert_eq!(
        (stored.revision, &stored.definition),
        (1, &json!({"step": 1}))
    );
    // Due and open filters.
    let due = |at| {
        store
            .ramps(&RampQuery {
                due_at: Some(at),
                open_only: true,
                ..RampQuery::default()
            })
            .unwrap()
            .len()
    };
    assert_eq!((due(49), due(50)), (0, 1));
}

fn tokens_round_trip_and_the_last_admin_stays(store: &Backend) {
    store
        .insert_token(&token("tok_a", Role::Admin, None, 1))
        .unwrap();
    store
        .insert_token(&token("tok_b", Role::Admin, None, 2))
        .unwrap();
    assert!(matches!(
        store.insert_token(&token("tok_c", Role::Sdk, Some("nowhere"), 3)),
        Err(StoreError::UnknownEnvironment(_))
    ));
    // An admin confined to environments keeps its scope, and is no "last admin".
    let scoped = TokenRecord {
        environments: Some(vec!["default".to_owned(), "staging".to_owned()]),
        ..token("tok_s", Role::Admin, None, 4)
    };
    store.insert_token(&scoped).unwrap();
    let tokens = store.tokens().unwrap();
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens[0].hash, [1; 32]);
    assert_eq!(tokens[0].environments, None);
    let stored = tokens.iter().find(|t| t.id == "tok_s").unwrap();
    assert_eq!(stored.environments, scoped.environments);
    assert_eq!(store.revoke_token("tok_a", 9).unwrap().revoked_at, Some(9));
    assert!(matches!(
        store.revoke_token("tok_b", 9),
        Err(StoreError::LastAdmin)
    ));
    assert_eq!(store.revoke_token("tok_s", 9).unwrap().revoked_at, Some(9));
    assert!(matches!(
        store.revoke_token("tok_zz", 9),
        Err(StoreError::UnknownToken(_))
    ));
    store.ping().unwrap();
    // Bootstrapping stores a first token only into a store without any.
    assert!(
        !store
            .insert_first_token(&token("tok_d", Role::Admin, None, 4))
            .unwrap()
    );
    assert_eq!(store.tokens().unwrap().len(), 3);
}

fn the_resume_log_leaves_out_audit_events(store: &Backend) {
    let commit = store
        .commit("default", &[upsert("f", "on", None)], None, &by("a"))
        .unwrap();
    let digest = commit_digest(&commit.changes);
    let event = store
        .record_event(
            "default",
            Some("f"),
            Operation::RampFailed,
            &json!({"reason": "x"}),
            &by("ramp"),
        )
        .unwrap();
    assert_eq!(event.version, 1);
    let log = store.changes_since("default", 0, 10).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        commit_digest(&log),
        digest,
        "an audit event changes no digest"
    );
    assert_eq!(
        store
            .changes(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap()[0]
            .operation,
        Operation::RampFailed
    );
}

fn settings_and_audit_filters_round_trip(store: &Backend) {
    let settings = EnvironmentSettings {
        metadata: serde_json::from_value(json!({"team": "web"})).unwrap(),
        evaluators: [("beta".to_owned(), json!({"in": ["x", ["a"]]}))].into(),
    };
    let commit = store
        .commit(
            "default",
            &[upsert("a", "on", None), upsert("b", "off", None)],
            Some(&settings),
            &by("a"),
        )
        .unwrap();
    assert_eq!(commit.changes.len(), 3);
    let env = store.environment("default").unwrap().unwrap();
    assert_eq!(
        (env.metadata, env.evaluators),
        (settings.metadata, settings.evaluators)
    );
    let keys: Vec<String> = store
        .flags("default")
        .unwrap()
        .into_iter()
        .map(|f| f.key)
        .collect();
    assert_eq!(keys, ["a", "b"]);
    let only_b = store
        .changes(&AuditQuery {
            flag: Some("b".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(only_b.len(), 1);
    let page = store
        .changes(&AuditQuery {
            before: Some(only_b[0].id),
            limit: 1,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(page[0].id < only_b[0].id);
}
