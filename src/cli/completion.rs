//! `capkv completion bash|zsh|fish`: shell completion scripts generated from the clap types.

use clap::CommandFactory;
use clap_complete::Shell;

/// Shells `capkv completion` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

/// Writes the completion script for `shell` to `out`.
pub fn write(shell: ShellArg, out: &mut dyn std::io::Write) {
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut super::Cli::command(), "capkv", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completion_names_the_commands() {
        let mut out = Vec::new();
        write(ShellArg::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        for word in ["txn", "keyspace", "completion", "--value-file"] {
            assert!(script.contains(word), "{word} missing from the bash completion");
        }
    }
}
