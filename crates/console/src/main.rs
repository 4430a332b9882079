//! `console`: the pipeline's web console. See the crate's library ([`console::cli`]).

fn main() -> anyhow::Result<()> {
    console::cli::main()
}
