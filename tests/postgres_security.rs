//! PostgreSQL security: TLS with the test CA, SCRAM password authentication, a role that
//! may only use queuelock's schema, and row-level security that keeps another role from
//! deleting or stealing a held lock. Each test has its own server or schema.

#[path = "support/mod.rs"]
mod support;

use queuelock::{Client, Error};
use queuelock_postgres::testkit::tokio_postgres;
use support::postgres::PgServer;
use support::secure::{lock_works, refused, Pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    let pki = Pki::new();
    let (cert, key) = (pki.server_cert.clone(), pki.server_key.clone());
    let server = tokio::task::block_in_place(|| {
        PgServer::start_with(
            &[
                "ssl=on",
                "ssl_cert_file=server.pem",
                "ssl_key_file=server-key.pem",
            ],
            Some(
                "local all all peer\nhostssl all all 127.0.0.1/32 trust\n\
                 host all all 127.0.0.1/32 reject\n",
            ),
            |data| {
                std::fs::copy(&cert, data.join("server.pem")).expect("cert");
                let k = data.join("server-key.pem");
                std::fs::copy(&key, &k).expect("key");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))
                    .expect("key mode");
            },
        )
    });
    let base = format!("postgres://postgres@{}/postgres?schema=tls", server.addr());
    // Verified against the test CA (and the certificate names 127.0.0.1).
    lock_works(&format!("{base}&{}", pki.query(&pki.ca, false))).await;
    // A certificate from another CA: the handshake fails.
    refused(
        &format!("{base}&{}", pki.query(&pki.other_ca, false)),
        |e| matches!(e, Error::Connection { .. }),
    )
    .await;
    // Without TLS the server refuses (pg_hba: host ... reject).
    refused(&format!("{base}&sslmode=disable"), |e| {
        matches!(e, Error::Auth { .. })
    })
    .await;
}

/// The shared test server (superuser) as a raw client.
async fn admin() -> tokio_postgres::Client {
    queuelock_postgres::testkit::raw().await
}

fn port() -> u16 {
    queuelock_postgres::testkit::config()
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_scram_and_row_level_security() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("sec_{}", &id[..12]);
    let (alice, bob) = (format!("alice_{}", &id[..8]), format!("bob_{}", &id[..8]));
    let pw_a = format!("pa-{}", &id[..10]);
    let pw_b = format!("pb-{}", &id[..10]);
    let port = port();
    // The admin (superuser) creates the schema by connecting once.
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres?schema={schema}");
    Client::connect(&admin_url)
        .await
        .expect("admin migrates")
        .close()
        .await
        .expect("close");
    let a = admin().await;
    // Members of queuelock_scram authenticate with SCRAM (scripts/lib/postgres.sh's
    // pg_hba). The roles may use the schema and nothing else.
    for (role, pw) in [(&alice, &pw_a), (&bob, &pw_b)] {
        a.batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{pw}' IN ROLE queuelock_scram; \
             GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};"
        ))
        .await
        .expect("create role");
    }
    let url = |role: &str, pw: &str, schema: &str| {
        format!("postgres://{role}:{pw}@127.0.0.1:{port}/postgres?schema={schema}&ttl=3s")
    };
    // A wrong password: Error::Auth, and the password is nowhere in the error.
    let e = refused(&url(&alice, "wrong-password", &schema), |e| {
        matches!(e, Error::Auth { .. })
    })
    .await;
    let text = format!("{e} {e:?}");
    assert!(!text.contains("wrong-password"), "{text}");
    // A schema the role may not create: a clear Error::Auth naming the schema.
    let e = refused(&url(&alice, &pw_a, &format!("{schema}_new")), |e| {
        matches!(e, Error::Auth { .. })
    })
    .await;
    assert!(e.to_string().contains(&format!("{schema}_new")), "{e}");
    assert!(!e.to_string().contains(&pw_a), "{e}");

    // Alice holds a lock.
    let ca = Client::connect(&url(&alice, &pw_a, &schema))
        .await
        .expect("alice connects with SCRAM");
    let held = ca
        .mutex("rls/held")
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let key = {
        let s = ca.session().await.expect("session");
        s.list("rls/held").await.expect("list").nodes[0].clone()
    };
    // Bob sees it (status works) but can neither take it nor delete its row.
    let cb = Client::connect(&url(&bob, &pw_b, &schema))
        .await
        .expect("bob connects");
    assert!(cb
        .mutex("rls/held")
        .expect("name")
        .try_lock()
        .await
        .expect("try")
        .is_none());
    let sb = cb.session().await.expect("session");
    sb.delete(&key).await.expect("bob's delete is a no-op");
    let (raw_b, conn) =
        format!("host=127.0.0.1 port={port} user={bob} password={pw_b} dbname=postgres")
            .parse::<tokio_postgres::Config>()
            .expect("config")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("raw bob");
    tokio::spawn(conn);
    let n = raw_b
        .execute(
            &format!("DELETE FROM {schema}.nodes WHERE owner = '{alice}'"),
            &[],
        )
        .await
        .expect("delete statement");
    assert_eq!(n, 0, "bob deleted alice's node rows");
    let n = raw_b
        .execute(
            &format!(
                "UPDATE {schema}.sessions SET expires_at = now() - interval '1 h' \
                 WHERE owner = '{alice}'"
            ),
            &[],
        )
        .await
        .expect("update statement");
    assert_eq!(n, 0, "bob expired alice's session");
    let n = raw_b
        .execute(
            &format!("DELETE FROM {schema}.sessions WHERE owner = '{alice}'"),
            &[],
        )
        .await
        .expect("delete statement");
    assert_eq!(n, 0, "bob deleted alice's live session");
    assert_eq!(held.is_lost(), None, "alice lost her lock to bob");
    assert_eq!(
        sb.list("rls/held").await.expect("list").nodes.len(),
        1,
        "alice's node is gone"
    );
    // Once Alice lets go, Bob gets the lock.
    held.release().await.expect("release");
    let g = cb
        .mutex("rls/held")
        .expect("name")
        .lock()
        .await
        .expect("bob locks");
    g.release().await.expect("release");
    ca.close().await.expect("close");
    cb.close().await.expect("close");
    a.batch_execute(&format!(
        "DROP SCHEMA {schema} CASCADE; DROP OWNED BY {alice}; DROP OWNED BY {bob}; \
         DROP ROLE {alice}; DROP ROLE {bob};"
    ))
    .await
    .expect("clean up");
}
