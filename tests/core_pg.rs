//! `merchant-edge core-pg` over a real PostgreSQL cluster (initdb'd per test), with real edges in
//! front: the snapshot/stream handoff under concurrent writes, restarts and kill -9, the mapped bank
//! schema, faults of the database, and two processes with a slot each.
mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::BTreeMap;

use common::{client, edge_config, eventually_within, lookup, source, start_following_edge};
use merchant_edge::pb::core_admin_client::CoreAdminClient;
use merchant_edge::pb::merchant_core_client::MerchantCoreClient;
use merchant_edge::pb::{
    ChangeKind, ChangeNotice, DeleteMerchantRequest, GetMerchantRequest, GetStatsRequest, LookupRequest, Merchant,
    MerchantStatus, SetFaultsRequest, Source, UpsertMerchantRequest, WatchChangesRequest,
};
use pg::{insert_merchants, merchant_id, CorePg, Postgres};
use tokio_stream::StreamExt;
use tonic::Code;

async fn core(core_pg: &CorePg) -> MerchantCoreClient<tonic::transport::Channel> {
    MerchantCoreClient::connect(core_pg.url()).await.expect("connect to core-pg")
}

/// The next `count` notices after `after` from a WatchChanges stream.
async fn notices(core_pg: &CorePg, after: u64, count: usize) -> Vec<ChangeNotice> {
    let mut stream =
        core(core_pg).await.watch_changes(WatchChangesRequest { after_sequence: after }).await.unwrap().into_inner();
    let mut notices = Vec::new();
    while notices.len() < count {
        let notice = tokio::time::timeout(pg::PATIENCE, stream.next())
            .await
            .expect("a notice arrives")
            .expect("the stream stays open")
            .expect("no error");
        notices.push(notice);
    }
    notices
}

async fn head(core_pg: &CorePg) -> u64 {
    let stats = CoreAdminClient::connect(core_pg.url()).await.unwrap().get_stats(GetStatsRequest {}).await.unwrap();
    stats.into_inner().head_sequence
}

/// Every row of the table as (status text, name), by ID.
async fn table(postgres: &Postgres) -> BTreeMap<String, (String, String)> {
    let rows = postgres.client().await.query("SELECT merchant_id, status, name FROM merchants", &[]).await.unwrap();
    rows.iter().map(|row| (row.get(0), (row.get(1), row.get(2)))).collect()
}

/// The status as the table stores it.
fn status_text(status: i32) -> &'static str {
    merchant_edge::core_pg::row::status_text(MerchantStatus::try_from(status).unwrap()).unwrap_or("UNSPECIFIED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_warm_started_during_writes_answers_exactly_what_the_table_holds() {
    let postgres = Postgres::start().await;
    postgres.execute(&insert_merchants(1, 10_000)).await;
    let core_pg = CorePg::start(&postgres.url(), "").await;
    core_pg.wait_ready().await;

    // Writers keep committing while the edge lists the table and joins the stream: single-row
    // changes, two-row transactions, deletes and re-creations.
    let writer = {
        let client = postgres.client().await;
        tokio::spawn(async move {
            for round in 0..300u64 {
                let n = 1 + (round * 37) % 10_000;
                let sql = match round % 4 {
                    0 => format!("UPDATE merchants SET status = 'SUSPENDED', name = 'Round {round}' WHERE merchant_id = '{}'", merchant_id(n)),
                    1 => format!(
                        "BEGIN; UPDATE merchants SET name = 'Pair {round}' WHERE merchant_id = '{}'; \
                         INSERT INTO merchants (merchant_id, name, mcc, city) VALUES ('{}', 'New {round}', '5812', 'Porto'); COMMIT",
                        merchant_id(n),
                        merchant_id(20_000 + round)
                    ),
                    2 => format!("DELETE FROM merchants WHERE merchant_id = '{}'", merchant_id(n)),
                    _ => format!(
                        "INSERT INTO merchants (merchant_id, name, mcc, city) VALUES ('{}', 'Back {round}', '5411', 'Faro') \
                         ON CONFLICT (merchant_id) DO UPDATE SET name = excluded.name, status = 'CLOSED'",
                        merchant_id(1 + ((round - 1) * 37) % 10_000)
                    ),
                };
                client.batch_execute(&sql).await.unwrap();
            }
        })
    };
    let mut config = edge_config(&core_pg.url());
    config.feed.warm_start = true;
    let edge = start_following_edge(config).await;
    writer.await.unwrap();

    let final_head = head(&core_pg).await;
    eventually_within(pg::PATIENCE, "the edge applied every change", || async {
        (edge.feed.applied() >= final_head).then_some(())
    })
    .await;
    assert_eq!(edge.feed.applied(), final_head);

    // Every ID ever written: the edge answers each from memory, exactly as the table holds it now.
    let rows = table(&postgres).await;
    let mut client = client(&edge).await;
    let ids = (1..=10_000).chain(20_000..20_300).map(merchant_id);
    for id in ids {
        let answer = lookup(&mut client, &id).await.unwrap();
        match rows.get(&id) {
            Some((status, name)) => {
                let merchant = answer.merchant.as_ref().unwrap_or_else(|| panic!("{id} is in the table"));
                assert_eq!((status_text(merchant.status), &merchant.name), (status.as_str(), name), "{id}");
                assert_eq!(source(&answer), Source::Cache, "{id} answered from memory");
            }
            None => assert!(!answer.found, "{id} was deleted"),
        }
    }
    let core_calls =
        CoreAdminClient::connect(core_pg.url()).await.unwrap().get_stats(GetStatsRequest {}).await.unwrap();
    assert_eq!(core_calls.into_inner().merchants, rows.len() as u64, "GetStats counts the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_continue_across_kill_9_and_a_change_committed_while_down_is_delivered() {
    let postgres = Postgres::start().await;
    let mut core_pg = CorePg::start(&postgres.url(), "").await;
    core_pg.wait_ready().await;
    // The history starts where the slot does: these changes are the first it holds.
    postgres.execute(&insert_merchants(1, 100)).await;
    let before = notices(&core_pg, 98, 2).await;
    assert_eq!(before.iter().map(|n| n.sequence).collect::<Vec<_>>(), [99, 100]);
    let incarnation = before[0].incarnation.clone();
    assert!(incarnation.starts_with("pg-"), "{incarnation}");

    // Let core-pg tell PostgreSQL what it has decoded (a status update carries the slot position it
    // confirms) before it dies: the slot must still hold what the history holds.
    let decoded_at: String = postgres.client().await.query_one("SELECT now()::text", &[]).await.unwrap().get(0);
    eventually_within(pg::PATIENCE, "core-pg reported its position", || async {
        let replied = "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE reply_time > $1::text::timestamptz)";
        let row = postgres.client().await.query_one(replied, &[&decoded_at]).await.unwrap();
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    core_pg.kill().await;
    postgres
        .execute(&format!(
            "INSERT INTO merchants (merchant_id, name, mcc, city) VALUES ('{}', 'While down', '5411', 'Braga')",
            merchant_id(500)
        ))
        .await;
    let core_pg = core_pg.start_again(&postgres.url()).await;
    core_pg.wait_ready().await;
    // A resume point from before the kill still works: same history, nothing lost, nothing renumbered.
    let after = notices(&core_pg, 99, 2).await;
    assert_eq!(after[0].sequence, 100);
    assert_eq!(after[1].sequence, 101);
    assert_eq!(after[1].merchant_id, merchant_id(500));
    assert_eq!(after[1].merchant.as_ref().unwrap().name, "While down");
    assert!(after.iter().all(|n| n.incarnation == incarnation));
    assert_eq!(postgres.slots().await, ["merchant_edge"], "the kill left no stray slot");

    // Every metric the README documents is exposed.
    let readme = include_str!("../README.md");
    let table =
        readme.split("| metric (prefix `merchant_edge_core_pg_`)").nth(1).unwrap().split("\n\n").next().unwrap();
    let (_, exposition) = common::http_get(core_pg.admin, "/metrics").await;
    let documented: Vec<String> = table
        .lines()
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(|name| name.split('{').next().unwrap().to_owned()))
        .collect();
    assert!(documented.len() >= 25, "{documented:?}");
    for name in documented {
        let series = format!("merchant_edge_core_pg_{name}");
        assert!(exposition.lines().any(|line| line.starts_with(&series)), "{series} is documented but not exposed");
    }

    // A graceful stop leaves the slot in place for the next start, and exits cleanly.
    assert!(core_pg.terminate().await.success());
    assert_eq!(postgres.slots().await, ["merchant_edge"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_table_is_served_through_its_mapping_and_a_missing_column_is_named() {
    let postgres = Postgres::start().await;
    postgres
        .execute(
            "CREATE SCHEMA bank; \
             CREATE TABLE bank.merchant_master (mid text PRIMARY KEY, legal_name text NOT NULL, category text NOT NULL, \
               town text NOT NULL, state text NOT NULL, rev bigint NOT NULL DEFAULT 0, changed timestamptz); \
             SELECT merchant_edge.untrack('merchants'); SELECT merchant_edge.track('bank.merchant_master', 'mid', 'rev', 'changed'); \
             INSERT INTO bank.merchant_master (mid, legal_name, category, town, state) \
               VALUES ('898000000000001', 'Padaria', '5462', 'Lisbon', 'ACTIVE');",
        )
        .await;
    let mapping = |city: &str| {
        format!(
            "[postgres]\ntable = \"bank.merchant_master\"\n[postgres.columns]\nmerchant_id = \"mid\"\nname = \"legal_name\"\n\
             mcc = \"category\"\ncity = \"{city}\"\nstatus = \"state\"\nversion = \"rev\"\nupdated_at = \"changed\"\n"
        )
    };

    let wrong = std::env::temp_dir().join(format!("merchant-edge-core-pg-wrong-{}.toml", std::process::id()));
    std::fs::write(&wrong, mapping("city")).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .args(["core-pg", "--database-url", &postgres.url(), "--config"])
        .arg(&wrong)
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&wrong).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("city") && stderr.contains("postgres.columns.city"), "{stderr}");

    let core_pg = CorePg::start(&postgres.url(), &mapping("town")).await;
    core_pg.wait_ready().await;
    let mut core = core(&core_pg).await;
    let found = core.get_merchant(GetMerchantRequest { merchant_id: "898000000000001".into() }).await.unwrap();
    assert_eq!(found.into_inner().merchant.unwrap().city, "Lisbon");

    // Rows an edge could not serve are skipped, counted, and turned into deletes (the sequence stays
    // whole); the table may change shape while it is followed.
    let start = head(&core_pg).await;
    postgres
        .execute(
            "INSERT INTO bank.merchant_master (mid, legal_name, category, town, state) VALUES \
               ('898000000000002', 'Odd', '5411', 'Porto', 'DORMANT'), ('12-34', 'Bad id', '5411', 'Porto', 'ACTIVE')",
        )
        .await;
    postgres.execute("ALTER TABLE bank.merchant_master ADD COLUMN note text").await;
    postgres
        .execute(
            "INSERT INTO bank.merchant_master (mid, legal_name, category, town, state, note) \
               VALUES ('898000000000003', 'After alter', '5411', 'Faro', 'PENDING_REVIEW', 'x');",
        )
        .await;
    let changes = notices(&core_pg, start, 3).await;
    assert_eq!(changes.iter().map(|n| n.sequence).collect::<Vec<_>>(), [start + 1, start + 2, start + 3]);
    assert_eq!(changes[0].kind(), ChangeKind::Delete, "an unknown status is not served");
    assert_eq!(changes[2].merchant.as_ref().unwrap().name, "After alter");
    assert_eq!(core_pg.metric("merchant_edge_core_pg_rows_skipped_total{reason=\"unknown_status\"}").await, 1.0);
    assert_eq!(core_pg.metric("merchant_edge_core_pg_rows_skipped_total{reason=\"invalid_id\"}").await, 1.0);
    let odd = core.get_merchant(GetMerchantRequest { merchant_id: "898000000000002".into() }).await.unwrap();
    assert!(!odd.into_inner().found, "reads agree with the stream: the row is not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_down_at_start_and_restarted_mid_stream_costs_nothing() {
    let postgres = Postgres::start().await;
    postgres.execute(&insert_merchants(1, 10)).await;
    postgres.crash();
    let core_pg = CorePg::start(&postgres.url(), "").await;
    let (status, body) = common::http_get(core_pg.admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let refused = core(&core_pg).await.get_merchant(GetMerchantRequest { merchant_id: merchant_id(1) }).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unavailable);

    postgres.restart();
    core_pg.wait_ready().await;
    let edge = start_following_edge(edge_config(&core_pg.url())).await;
    let mut terminal = client(&edge).await;
    assert!(lookup(&mut terminal, &merchant_id(1)).await.unwrap().found);
    assert!(!lookup(&mut terminal, &merchant_id(77)).await.unwrap().found, "cached as not found");

    postgres.crash();
    eventually_within(pg::PATIENCE, "core-pg notices", || async { (!core_pg.is_ready().await).then_some(()) }).await;
    postgres.restart();
    core_pg.wait_ready().await;
    postgres.execute(&insert_merchants(77, 1)).await;
    // The onboarded merchant reaches the edge through the change stream, not through a lookup miss.
    let answer = eventually_within(pg::PATIENCE, "the new merchant is found", || {
        let mut terminal = terminal.clone();
        async move { lookup(&mut terminal, &merchant_id(77)).await.ok().filter(|a| a.found) }
    })
    .await;
    assert_eq!(source(&answer), Source::Cache);
    assert!(core_pg.metric("merchant_edge_core_pg_decoder_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_each_with_a_slot_serve_the_same_history_and_admin_writes_give_tokens() {
    let postgres = Postgres::start().await;
    let mut first = CorePg::start(&postgres.url(), "[postgres]\nslot = \"edge_a\"\n").await;
    let second = CorePg::start(&postgres.url(), "[postgres]\nslot = \"edge_b\"\n").await;
    first.wait_ready().await;
    second.wait_ready().await;

    let mut admin = CoreAdminClient::connect(first.url()).await.unwrap();
    let merchant = Merchant {
        merchant_id: merchant_id(9),
        name: "Via admin".into(),
        mcc: "5411".into(),
        city: "Coimbra".into(),
        ..Merchant::default()
    };
    let written = admin.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await.unwrap().into_inner();
    assert_eq!(written.sequence, 1);
    assert_eq!(MerchantStatus::try_from(written.merchant.unwrap().status).unwrap(), MerchantStatus::Active);
    let deleted = admin.delete_merchant(DeleteMerchantRequest { merchant_id: merchant_id(9) }).await.unwrap();
    assert_eq!(deleted.into_inner().sequence, 2);
    let missing = admin.delete_merchant(DeleteMerchantRequest { merchant_id: merchant_id(9) }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let faults = admin.set_faults(SetFaultsRequest::default()).await.unwrap_err();
    assert_eq!(faults.code(), Code::Unimplemented);

    let seen = |notices: Vec<ChangeNotice>| notices.into_iter().map(|n| (n.sequence, n.kind)).collect::<Vec<_>>();
    assert_eq!(seen(notices(&first, 0, 2).await), seen(notices(&second, 0, 2).await));

    // One process dies; an edge on the other still gets every write, and its token works.
    first.kill().await;
    let edge = start_following_edge(edge_config(&second.url())).await;
    let mut admin = CoreAdminClient::connect(second.url()).await.unwrap();
    let merchant = Merchant { merchant_id: merchant_id(10), name: "Second".into(), ..Merchant::default() };
    let token =
        admin.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await.unwrap().into_inner().sequence;
    let mut terminal = client(&edge).await;
    let answer = terminal.lookup(LookupRequest { merchant_id: merchant_id(10), min_sequence: token }).await.unwrap();
    assert!(answer.into_inner().found, "the token's write is visible");
    assert_eq!(postgres.slots().await, ["edge_a", "edge_b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_database_in_place_is_a_new_incarnation_and_edges_resync() {
    let postgres = Postgres::start().await;
    let core_pg = CorePg::start(&postgres.url(), "").await;
    core_pg.wait_ready().await;
    postgres.execute(&insert_merchants(1, 5)).await;
    let before = notices(&core_pg, 0, 5).await[0].incarnation.clone();
    let mut config = edge_config(&core_pg.url());
    config.feed.warm_start = true;
    let edge = start_following_edge(config).await;
    let mut terminal = client(&edge).await;
    assert!(lookup(&mut terminal, &merchant_id(1)).await.unwrap().found);

    // A restored backup or a promoted standby: same address, other history. Its sequences restart,
    // so an edge must not read them as old ones: it resyncs and forgets what the old database held.
    postgres.replace().await;
    eventually_within(pg::PATIENCE, "core-pg follows the new database", || async {
        let mut admin = CoreAdminClient::connect(core_pg.url()).await.ok()?;
        let stats = admin.get_stats(GetStatsRequest {}).await.ok()?.into_inner();
        (stats.incarnation != before && core_pg.is_ready().await).then_some(())
    })
    .await;
    postgres.execute(&insert_merchants(6, 5)).await;
    let after = notices(&core_pg, 0, 5).await;
    assert_ne!(after[0].incarnation, before);
    assert_eq!(after[0].merchant_id, merchant_id(6));
    eventually_within(pg::PATIENCE, "the edge follows the new database", || {
        let mut terminal = terminal.clone();
        async move {
            let new = lookup(&mut terminal, &merchant_id(6)).await.ok()?.found;
            let old = lookup(&mut terminal, &merchant_id(1)).await.ok()?.found;
            (new && !old).then_some(())
        }
    })
    .await;
}
