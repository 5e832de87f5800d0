fn main() {}
#[test]
fn t() {
    let _ = tiersim_engine::testing::FakeProvider::near("x");
}
