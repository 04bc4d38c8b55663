use crate::{Ctx, Res};
pub fn main(_ctx: &Ctx, _args: &[String]) -> Res<i32> {
    crate::fail("lint: not yet")
}
