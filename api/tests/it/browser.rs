//! A headless Chromium driven through ChromeDriver's WebDriver protocol, for the browser tests
//! (the API's and, by `#[path]`, the worker's end-to-end console test).
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn tool(var: &str, default: &str, package: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is needed: scripts/test.sh installs it (apt-get install {package})"
    );
    path
}

/// A ChromeDriver process and one headless Chromium session, closed on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub async fn start() -> Self {
        let chromium = tool("HERALD_CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = tool(
            "HERALD_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // A process group of its own: the Chromium it starts joins it, so a drop can end both.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(res) = http.get(format!("{base}/status")).send().await
                && res.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not answer on {base}");
        let profile = tempfile::tempdir().expect("profile dir");
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": [
                    "--headless", "--no-sandbox", "--window-size=1280,1000", "--hide-scrollbars", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ]}
            }}}))
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Self {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    pub async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        assert!(
            answer["value"].get("error").is_none(),
            "{method} {path}: {answer}"
        );
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn source(&self) -> String {
        self.command("GET", "/source", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().expect("element id").to_owned()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Waits (up to 10 s) until the page's URL ends with `suffix`: a click that submits a form
    /// can return before the navigation it starts has finished.
    pub async fn wait_for_url(&self, suffix: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.current_url().await;
            if url.ends_with(suffix) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still at {url}, waiting for …{suffix}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn current_url(&self) -> String {
        self.command("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Browser {
    /// Ends the WebDriver session (ChromeDriver then quits Chromium), then kills the process
    /// group, so neither ChromeDriver nor a headless Chromium outlives the test.
    fn drop(&mut self) {
        let address = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let png = self.command("GET", "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("PNG");
        std::fs::write(path, bytes).expect("write screenshot");
    }

    /// Resizes the window (a phone is 390 wide).
    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Waits (up to `secs`) until the page's source contains `text`, reloading between looks when
    /// `reload`; returns the source.
    pub async fn wait_for_text(&self, text: &str, reload: bool, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let source = self.source().await;
            if source.contains(text) {
                return source;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} never appeared at {}: {source}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            if reload {
                self.command("POST", "/refresh", json!({})).await;
            }
        }
    }
}
