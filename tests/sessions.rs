//! The sessions example (tower-sessions on the stead store) over real HTTP with a
//! cookie-keeping client: the cookie round trip, expiry on the manual clock, and "sign out
//! everywhere" ending the user's other sessions.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/sessions.rs"]
mod example;

use std::time::Duration;

use stead::session::SessionClient;
use stead_fixtures::TestRuntime;

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

async fn call(c: &reqwest::Client, method: reqwest::Method, url: String) -> (u16, String) {
    let r = c.request(method, url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn log_in_count_expire_and_sign_out_everywhere() {
    let rt = TestRuntime::memory().await;
    let sessions = SessionClient::new(&rt).unwrap();
    let base = serve(example::app(sessions.clone())).await;
    let (get, post) = (reqwest::Method::GET, reqwest::Method::POST);

    // Three browsers of the same user.
    let (a, b, c) = (browser(), browser(), browser());
    for who in [&a, &b, &c] {
        let (s, body) = call(who, post.clone(), format!("{base}/login?user=ada")).await;
        assert_eq!((s, body.as_str()), (200, "welcome"));
    }
    // The cookie round trip: each browser's counter is its own.
    assert_eq!(
        call(&a, get.clone(), format!("{base}/count")).await.1,
        "ada: 1"
    );
    assert_eq!(
        call(&a, get.clone(), format!("{base}/count")).await.1,
        "ada: 2"
    );
    assert_eq!(
        call(&b, get.clone(), format!("{base}/count")).await.1,
        "ada: 1"
    );
    assert_eq!(sessions.user_sessions("ada").await.unwrap().len(), 3);

    // Inactivity: a request every 20 minutes keeps a session alive for two hours, even
    // one that only reads it (`/me` never changes the session, so it is never saved).
    for _ in 0..6 {
        rt.advance(Duration::from_secs(20 * 60)).await;
        assert_eq!(call(&b, get.clone(), format!("{base}/me")).await.1, "ada");
        assert_eq!(call(&a, get.clone(), format!("{base}/me")).await.1, "ada");
    }
    // c made no request for two hours: gone, and its object deleted itself.
    assert_eq!(call(&c, get.clone(), format!("{base}/count")).await.0, 401);
    assert_eq!(sessions.user_sessions("ada").await.unwrap().len(), 2);

    // a signs out everywhere: b's session ends too, at its very next request.
    let (s, body) = call(&a, post.clone(), format!("{base}/logout-everywhere")).await;
    assert_eq!((s, body.as_str()), (200, "2 sessions ended"));
    assert_eq!(call(&b, get.clone(), format!("{base}/count")).await.0, 401);
    assert_eq!(call(&a, get.clone(), format!("{base}/count")).await.0, 401);
    assert!(sessions.user_sessions("ada").await.unwrap().is_empty());

    // Logging in again works; logging out ends just that session.
    call(&a, post.clone(), format!("{base}/login?user=ada")).await;
    call(&b, post.clone(), format!("{base}/login?user=ada")).await;
    assert_eq!(
        call(&a, post.clone(), format!("{base}/logout")).await.1,
        "bye"
    );
    assert_eq!(call(&a, get.clone(), format!("{base}/count")).await.0, 401);
    assert_eq!(
        call(&b, get.clone(), format!("{base}/count")).await.1,
        "ada: 1"
    );
    assert_eq!(sessions.user_sessions("ada").await.unwrap().len(), 1);
    rt.shutdown().await.unwrap();
}
