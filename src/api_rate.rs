//! The client side of the API server's load: a token bucket in front of the operator's client
//! (client-go's `--kube-api-qps` and `--kube-api-burst`), so that a change that touches thousands
//! of pools at once reaches the API server as a steady stream rather than a flood. Requests that
//! find the bucket empty wait in line; how long each waited is a histogram, so a backlog shows.
//! Writes that carry out a pool's plan (its Deployment's size, the marks on the workers to go)
//! take their tokens in a lane of their own ([`ThrottleLayer::urgent`]): they may borrow up to a
//! burst ahead, so that they never queue behind the status writes and Events of the pools that
//! changed before them; those wait longer instead. The leader lease uses a client of its own,
//! outside the bucket: a full bucket must never cost the lease. Past the bucket, each request is
//! timed to its response head ([`TimingLayer`]), much as client-go's
//! `rest_client_request_duration_seconds` is (but across kube's own retries of a request, which
//! sit inside this layer): a write that waits tells whether it waited for the API server or for
//! the operator.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::metrics::VerbLabel;

/// Requests per second, and how many may go at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiRate {
    /// Zero turns the limit off.
    pub qps: f64,
    pub burst: u32,
}

impl ApiRate {
    /// Room for a tenth of 1,000 pools changing at once (a Deployment write, a status write and
    /// an Event each: 300 requests) without waiting, and a steady 100 per second beyond that.
    /// Measured by benches/scale.sh; see docs/operator.md, "Sizing".
    pub const DEFAULT: ApiRate = ApiRate {
        qps: 100.0,
        burst: 400,
    };
}

/// `burst` tokens, refilled at `qps` per second.
#[derive(Debug, Clone)]
struct Bucket {
    rate: ApiRate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: ApiRate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            at: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there. An `urgent` request may
    /// take one a burst ahead of the refill, which every other request then waits out.
    fn take(&mut self, now: Instant, urgent: bool) -> Result<(), Duration> {
        if self.rate.qps <= 0.0 || !self.rate.qps.is_finite() {
            return Ok(());
        }
        let burst = f64::from(self.rate.burst.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate.qps).min(burst);
        let needed = if urgent { 1.0 - burst } else { 1.0 };
        if self.tokens >= needed {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (needed - self.tokens) / self.rate.qps,
            ))
        }
    }
}

/// Puts a [`Throttle`] in front of a client's service stack. Every service it makes, and every
/// one its [`urgent`](ThrottleLayer::urgent) lane makes, draws on one bucket.
#[derive(Clone)]
pub struct ThrottleLayer {
    bucket: Arc<Mutex<Bucket>>,
    waits: Histogram,
    urgent: bool,
}

impl ThrottleLayer {
    /// Each request's wait for a token is observed in `waits`, in seconds.
    pub fn new(rate: ApiRate, waits: Histogram) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(Bucket::full(rate, Instant::now()))),
            waits,
            urgent: false,
        }
    }

    /// The lane of the writes that carry out a plan, on the same bucket: its requests go ahead
    /// of everyone else's, a burst at most.
    pub fn urgent(&self) -> Self {
        Self {
            urgent: true,
            ..self.clone()
        }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Throttle<S> {
        Throttle {
            inner,
            bucket: self.bucket.clone(),
            urgent: self.urgent,
            waits: self.waits.clone(),
            holding_token: false,
            waiting: None,
        }
    }
}

/// A service that is ready only once it holds a token. kube's client drives its stack from one
/// buffer, so requests queue there, in order, while the bucket refills.
pub struct Throttle<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    urgent: bool,
    waits: Histogram,
    holding_token: bool,
    /// The timer until the next token, and when the request began to wait.
    waiting: Option<(Pin<Box<Sleep>>, Instant)>,
}

impl<S, R> Service<R> for Throttle<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.holding_token {
            if let Some((timer, _)) = &mut self.waiting {
                ready!(timer.as_mut().poll(cx));
            }
            let now = Instant::now();
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(now, self.urgent);
            match taken {
                Ok(()) => {
                    let since = self.waiting.take().map_or(now, |(_, since)| since);
                    self.waits
                        .observe(now.saturating_duration_since(since).as_secs_f64());
                    self.holding_token = true;
                }
                Err(delay) => {
                    let since = self.waiting.as_ref().map_or(now, |(_, since)| *since);
                    self.waiting = Some((Box::pin(tokio::time::sleep(delay)), since));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.holding_token = false;
        self.inner.call(request)
    }
}

/// Puts a [`Timed`] in front of a client's HTTP service.
#[derive(Clone)]
pub struct TimingLayer {
    durations: Family<VerbLabel, Histogram>,
}

impl TimingLayer {
    /// Each request's time to its response head is observed in `durations`, by verb.
    pub fn new(durations: Family<VerbLabel, Histogram>) -> Self {
        Self { durations }
    }
}

impl<S> Layer<S> for TimingLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            durations: self.durations.clone(),
        }
    }
}

pub struct Timed<S> {
    inner: S,
    durations: Family<VerbLabel, Histogram>,
}

impl<S, B> Service<http::Request<B>> for Timed<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let histogram = self
            .durations
            .get_or_create(&VerbLabel {
                verb: verb(&request),
            })
            .clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            histogram.observe(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// The request's HTTP method (GET covers gets and lists), or WATCH for a watch: a bounded set.
fn verb<B>(request: &http::Request<B>) -> &'static str {
    let watch = || {
        request
            .uri()
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"))
    };
    match *request.method() {
        http::Method::GET if watch() => "WATCH",
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(qps: f64, burst: u32) -> (Bucket, Instant) {
        let now = Instant::now();
        (Bucket::full(ApiRate { qps, burst }, now), now)
    }

    #[test]
    fn a_burst_goes_at_once_then_requests_come_at_the_rate() {
        let (mut bucket, start) = bucket(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(start, false), Ok(()));
        }
        let wait = bucket.take(start, false).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(
            bucket.take(start + Duration::from_millis(100), false),
            Ok(())
        );
        assert!(
            bucket
                .take(start + Duration::from_millis(150), false)
                .is_err()
        );
        // A quiet spell refills no more than the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later, false), Ok(()));
        }
        assert!(bucket.take(later, false).is_err());
    }

    #[test]
    fn urgent_requests_borrow_a_burst_ahead_and_the_others_wait_it_out() {
        let (mut bucket, start) = bucket(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(start, false), Ok(()));
        }
        // Empty for the others; the urgent lane takes a burst more at once.
        assert!(bucket.take(start, false).is_err());
        for _ in 0..3 {
            assert_eq!(bucket.take(start, true), Ok(()));
        }
        let urgent_wait = bucket.take(start, true).unwrap_err();
        assert!(
            (urgent_wait.as_secs_f64() - 0.1).abs() < 1e-9,
            "{urgent_wait:?}"
        );
        // The others wait until the debt is paid and a token is there: four refills.
        let wait = bucket.take(start, false).unwrap_err();
        assert!((wait.as_secs_f64() - 0.4).abs() < 1e-9, "{wait:?}");
        assert!(
            bucket
                .take(start + Duration::from_millis(390), false)
                .is_err()
        );
        assert_eq!(
            bucket.take(start + Duration::from_millis(400), false),
            Ok(())
        );
    }

    #[test]
    fn zero_qps_is_no_limit() {
        let (mut bucket, now) = bucket(0.0, 1);
        for _ in 0..10_000 {
            assert_eq!(bucket.take(now, false), Ok(()));
        }
    }

    #[test]
    fn an_instant_from_before_the_last_take_refills_nothing() {
        let (mut bucket, start) = bucket(10.0, 1);
        assert_eq!(bucket.take(start + Duration::from_secs(1), false), Ok(()));
        assert!(bucket.take(start, false).is_err());
    }

    /// Counts the requests that reach it.
    #[derive(Default)]
    struct Counting(u32);

    impl Service<()> for Counting {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.0 += 1;
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_burst_wait_their_turn_and_the_wait_is_observed() {
        use tower::ServiceExt;
        let waits = Histogram::new([0.001, 0.1, 1.0].into_iter());
        let mut service = ThrottleLayer::new(ApiRate { qps: 2.0, burst: 2 }, waits.clone())
            .layer(Counting::default());
        let start = Instant::now();
        for _ in 0..4 {
            service.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(service.inner.0, 4);
        // Two at once, then one every half second.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(1100),
            "{took:?}"
        );
        let mut encoded = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("waits", "", waits);
        prometheus_client::encoding::text::encode(&mut encoded, &registry).unwrap();
        assert!(encoded.contains("waits_count 4"), "{encoded}");
        assert!(encoded.contains("waits_sum 1.0"), "{encoded}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_urgent_lane_goes_ahead_on_the_same_bucket() {
        use tower::ServiceExt;
        let layer = ThrottleLayer::new(
            ApiRate {
                qps: 10.0,
                burst: 2,
            },
            Histogram::new([1.0].into_iter()),
        );
        let mut others = layer.layer(Counting::default());
        let mut urgent = layer.urgent().layer(Counting::default());
        let start = Instant::now();
        for _ in 0..2 {
            others.ready().await.unwrap().call(()).await.unwrap();
        }
        // The bucket is empty; the urgent lane does not wait for it.
        for _ in 0..2 {
            urgent.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The others wait out what the urgent lane borrowed, then a token: 0.3 s at 10 a second.
        others.ready().await.unwrap().call(()).await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(310),
            "{took:?}"
        );
        assert_eq!((others.inner.0, urgent.inner.0), (3, 2));
    }

    #[test]
    fn verbs_come_from_a_bounded_set() {
        let request = |method: &str, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .expect("a request")
        };
        let pods = "/api/v1/namespaces/a/pods";
        assert_eq!(verb(&request("GET", pods)), "GET");
        assert_eq!(
            verb(&request(
                "GET",
                &format!("{pods}?labelSelector=x&watch=true")
            )),
            "WATCH"
        );
        assert_eq!(verb(&request("GET", &format!("{pods}?watch=false"))), "GET");
        assert_eq!(verb(&request("PATCH", &format!("{pods}/p"))), "PATCH");
        assert_eq!(verb(&request("OPTIONS", pods)), "OTHER");
    }

    #[tokio::test]
    async fn a_request_is_timed_by_its_verb_until_its_answer() {
        let durations = Family::<VerbLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 1.0].into_iter())
        });
        let mut timed = TimingLayer::new(durations.clone()).layer(tower::service_fn(
            |_: http::Request<()>| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, std::convert::Infallible>(())
            },
        ));
        let request = http::Request::builder()
            .method("PATCH")
            .uri("/apis/apps/v1/namespaces/a/deployments/d")
            .body(())
            .expect("a request");
        timed.call(request).await.expect("answered");
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("request_duration_seconds", "", durations);
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoded");
        // One PATCH, slower than the first bucket and within the second.
        assert!(
            text.contains(r#"request_duration_seconds_bucket{le="0.001",verb="PATCH"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"request_duration_seconds_bucket{le="1.0",verb="PATCH"} 1"#),
            "{text}"
        );
    }
}
