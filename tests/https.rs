//! Fetching over HTTPS: lighttpd with TLS in front of git-http-backend, a self-signed
//! certificate, and pullnix's gix/curl transport trusting it through `repo.ca_file`.

mod common;

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
