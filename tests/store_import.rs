//! `bizcall store import <file.csv>` on SQLite and PostgreSQL: idempotent,
//! a line-numbered error for each bad row, and nothing half-imported.

mod common;

use common::{run_cli, Backend, TestDb};

async fn import_story(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url().to_string();
    let env = [("BIZCALL_DATABASE__URL", url.as_str())];
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let list = || run_cli(&["store", "list"], &env).1;

    let good = file(
        "stores.csv",
        "slug,name,number\n\
         gangnam,\"Gangnam, 1st\",050-1111-2222,02-555-6666\n\
         jamsil,Jamsil,0503333\n",
    );
    let (code, _, err) = run_cli(&["store", "import", &good], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("imported 2 store(s), 0 already there"),
        "{err}"
    );
    let listed = list();
    assert!(
        listed.contains("gangnam\tGangnam, 1st\t025556666,05011112222"),
        "{listed}"
    );
    assert!(listed.contains("jamsil\tJamsil\t0503333"), "{listed}");

    // Again: nothing changes.
    let (code, _, err) = run_cli(&["store", "import", &good], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("imported 0 store(s), 2 already there unchanged"),
        "{err}"
    );

    // Bad rows: each named by line, and the good row beside them is not added.
    let bad = file(
        "bad.csv",
        "songpa,Songpa,0507777\n\
         Bad Slug,x,0501\n\
         mapo,Mapo,12ab\n\
         nowon,Nowon\n",
    );
    let (code, _, err) = run_cli(&["store", "import", &bad], &env);
    assert_ne!(code, 0);
    for line in [
        "line 2:",
        "line 3:",
        "line 4:",
        "3 bad row(s); nothing imported",
    ] {
        assert!(err.contains(line), "{line}: {err}");
    }
    assert!(!list().contains("songpa"));

    // Rows that clash with the database: also all or nothing.
    let clash = file(
        "clash.csv",
        "songpa,Songpa,0507777\n\
         gangnam,Renamed,05011112222\n\
         dobong,Dobong,0503333\n",
    );
    let (code, _, err) = run_cli(&["store", "import", &clash], &env);
    assert_ne!(code, 0);
    assert!(
        err.contains("line 2: store gangnam exists with other details"),
        "{err}"
    );
    assert!(
        err.contains("line 3: number 0503333 belongs to store jamsil"),
        "{err}"
    );
    assert!(!list().contains("songpa"));

    let (code, _, err) = run_cli(&["store", "import", "/nonexistent.csv"], &env);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent.csv"), "{err}");
    let binary = dir.path().join("bin.csv");
    std::fs::write(&binary, b"\xff\xfe\x00x").unwrap();
    let (code, _, err) = run_cli(&["store", "import", binary.to_str().unwrap()], &env);
    assert_ne!(code, 0);
    assert!(err.contains("not UTF-8"), "{err}");
    db.cleanup().await;
}

on_both_databases!(import, import_story);
