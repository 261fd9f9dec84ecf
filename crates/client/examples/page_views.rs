//! Counts page views through a running cluster (`tools/demo.sh` starts one):
//!
//! ```sh
//! cargo run --release -p counter-client --example page_views -- 127.0.0.1:7100
//! ```

#[tokio::main]
async fn main() -> Result<(), counter_client::Error> {
    let router = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7100".into());
    let client = counter_client::Client::connect(router).await?;
    for _ in 0..3 {
        let views = client.incr("page_views", 1).await?;
        println!("page_views = {views}");
    }
    match client.decr_bounded("stock:demo", 1, Some(0), None).await {
        Ok(left) => println!("sold one, {left} left"),
        Err(e) if e.kind == counter_client::ErrorKind::Rejected => println!("sold out: {e}"),
        Err(e) => return Err(e),
    }
    Ok(())
}
