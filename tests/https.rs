//! Fetching over HTTPS: lighttpd with TLS in front of git-http-backend, a self-signed
//! certificate, and pullnix's gix/curl transport trusting it through `repo.ca_file`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{
    FlakeRepo, HttpGit, TestSystem, exit_code, pullnix, stderr_text, toml_string, write_config,
};

#[test]
fn deploys_over_https_with_the_configured_ca() {
    let repo = FlakeRepo::new();
    let (_, initial) = repo.commit_and_build("good https-base");
    let sys = TestSystem::new(&initial);
    let server = HttpGit::start_tls(&repo);
    assert!(server.url().starts_with("https://"));
    let ca = server.ca_file().unwrap();
    let config = write_config(
        &sys,
        server.url(),
        &format!("[repo]\nca_file = {}\n", toml_string(&ca.to_string_lossy())),
    );
    let head = repo.commit("good https-1");
    let out = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr_text(&out));
    let state = sys.state_json().unwrap();
    assert_eq!(state["deployed"]["commit"], head.as_str());
    assert_eq!(
        sys.current_system().unwrap(),
        std::path::PathBuf::from(state["deployed"]["system"].as_str().unwrap())
    );
}

#[test]
fn untrusted_certificate_is_a_fetch_error_that_says_so() {
    let repo = FlakeRepo::new();
    let (_, initial) = repo.commit_and_build("good https-base");
    let sys = TestSystem::new(&initial);
    let server = HttpGit::start_tls(&repo);
    let config = write_config(&sys, server.url(), "");
    repo.commit("good https-untrusted");
    let out = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&out), 4, "{}", stderr_text(&out));
    let err = stderr_text(&out);
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains(server.url()), "{err}");
    assert_eq!(sys.current_system().unwrap(), initial);
    assert!(sys.switch_log().is_empty());
}

/// Every place pullnix writes or prints text after the runs of `m`-like machine `sys`: its
/// stderr and stdout, the state file, the journal, the report command's input, the metrics.
fn everything_written(
    sys: &TestSystem,
    outputs: &[&std::process::Output],
    extra: &[&Path],
) -> String {
    let mut all = String::new();
    for out in outputs {
        all.push_str(&stderr_text(out));
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    for file in [sys.state_file(), sys.state_dir().join("journal.jsonl")]
        .iter()
        .map(PathBuf::as_path)
        .chain(extra.iter().copied())
    {
        all.push_str(&fs::read_to_string(file).unwrap_or_default());
    }
    all
}

#[test]
fn a_password_in_the_url_is_never_shown_or_stored() {
    let repo = FlakeRepo::new();
    let (_, initial) = repo.commit_and_build("good https-base");
    let sys = TestSystem::new(&initial);
    let server = HttpGit::start_tls_with_auth(&repo, "deploy", "s3cr3t-t0ken");
    let url = server
        .url()
        .replacen("https://", "https://deploy:s3cr3t-t0ken@", 1);
    let sink = sys.scratch("report").join("reports.jsonl");
    let extra = format!(
        "[repo]\nca_file = {}\n[report]\ncommand = [\"/bin/sh\", \"-c\", {}]\ntextfile = \"/var/lib/node-exporter/pullnix.prom\"\n",
        toml_string(&server.ca_file().unwrap().to_string_lossy()),
        toml_string(&format!(
            "cat >> {}; echo >> {}",
            sink.display(),
            sink.display()
        )),
    );
    // First a branch that does not exist: the fetch error quotes the remote.
    let config = write_config(&sys, &url, &format!("{extra}[repo]\nbranch = \"nope\"\n"));
    let failed = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&failed), 4, "{}", stderr_text(&failed));
    assert!(
        stderr_text(&failed).contains("https://***@127.0.0.1"),
        "{}",
        stderr_text(&failed)
    );
    // Then a deployment over the authenticated remote.
    let config = write_config(&sys, &url, &extra);
    let head = repo.commit("good https-auth-1");
    let deployed = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&deployed), 0, "{}", stderr_text(&deployed));
    assert_eq!(
        sys.state_json().unwrap()["deployed"]["commit"],
        head.as_str()
    );
    let status = pullnix(&sys, &config, &["status", "--json"]);
    let human = pullnix(&sys, &config, &["status"]);
    let metrics = sys.root().join("var/lib/node-exporter/pullnix.prom");
    let all = everything_written(
        &sys,
        &[&failed, &deployed, &status, &human],
        &[&sink, &metrics],
    );
    assert!(all.contains("fetch-failed"), "{all}");
    assert!(!all.contains("s3cr3t"), "the password leaked:\n{all}");
}

#[test]
fn a_root_only_credentials_file_authenticates_without_a_secret_in_the_url() {
    let repo = FlakeRepo::new();
    let (_, initial) = repo.commit_and_build("good https-base");
    let sys = TestSystem::new(&initial);
    let server = HttpGit::start_tls_with_auth(&repo, "deploy", "s3cr3t-t0ken");
    let creds = sys.scratch("keys").join("credentials");
    fs::write(
        &creds,
        "# for the fleet repository\nusername=deploy\npassword=s3cr3t-t0ken\n",
    )
    .unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "[repo]\nca_file = {}\ncredentials_file = {}\n",
        toml_string(&server.ca_file().unwrap().to_string_lossy()),
        toml_string(&creds.to_string_lossy()),
    );
    let config = write_config(&sys, server.url(), &extra);
    let head = repo.commit("good https-creds-1");
    let out = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&out), 0, "{}", stderr_text(&out));
    assert_eq!(
        sys.state_json().unwrap()["deployed"]["commit"],
        head.as_str()
    );
    assert!(!everything_written(&sys, &[&out], &[]).contains("s3cr3t"));

    // Without it the server says no.
    let config = write_config(
        &sys,
        server.url(),
        &format!(
            "[repo]\nca_file = {}\n",
            toml_string(&server.ca_file().unwrap().to_string_lossy())
        ),
    );
    repo.commit("good https-creds-2");
    let out = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&out), 4, "{}", stderr_text(&out));

    // A file others can read, or one that belongs to someone else, is refused before the
    // secret is sent anywhere.
    let config = write_config(&sys, server.url(), &extra);
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
    let out = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&out), 4, "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("chmod 600"),
        "{}",
        stderr_text(&out)
    );
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    common::run_ok(std::process::Command::new("chown").arg("65534").arg(&creds));
    let out = pullnix(&sys, &config, &["sync"]);
    assert_eq!(exit_code(&out), 4, "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("belongs to uid 65534"),
        "{}",
        stderr_text(&out)
    );
    assert!(!stderr_text(&out).contains("s3cr3t"));
}
