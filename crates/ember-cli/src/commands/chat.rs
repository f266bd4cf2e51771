//! `ember chat`: an interactive conversation in the terminal through the model's chat
//! template (`tokenizer_config.json`'s, else ChatML), the reply streamed token by token
//! from the serving engine. Commands: `/reset`, `/system TEXT`, `/help`, `/quit`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use ember_data::sft::Message;
use ember_infer::SamplingConfig;
use ember_nn::FusedBackend;

use crate::commands::On;
use crate::commands::local_engine::LocalEngine;
use crate::commands::serve::WeightsArg;
use crate::error::CliError;

#[derive(Args)]
pub struct ChatArgs {
    /// Ember checkpoint (or run directory) or Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// A `peft` adapter directory or an `ember finetune` run, merged into the weights.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The system message the conversation starts with.
    #[arg(long)]
    pub system: Option<String>,
    /// New tokens per reply at most.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1.0 = off.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weights the decoder runs: f32 (default), int8 or int4.
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
}

const HELP: &str = "/reset: forget the conversation (keeps the system message)\n/system TEXT: set the system message and start over\n/quit: leave (or end of input)";

/// The conversation: an optional system message, then alternating turns.
struct Conversation {
    system: Option<String>,
    turns: Vec<Message>,
}

impl Conversation {
    fn messages(&self) -> Vec<Message> {
        let system = self.system.iter().map(|s| Message {
            role: "system".into(),
            content: s.clone(),
        });
        system.chain(self.turns.iter().cloned()).collect()
    }
}

/// `ember chat` on backend `B`.
pub fn run<B: FusedBackend>(on: &On<B>, args: ChatArgs) -> Result<(), CliError> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(CliError::Usage(format!(
            "--temperature: must be >= 0, got {}",
            args.temperature
        )));
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return Err(CliError::Usage(format!(
            "--top-p: must be in (0, 1], got {}",
            args.top_p
        )));
    }
    if args.max_new_tokens == 0 {
        return Err(CliError::Usage(
            "--max-new-tokens: must be at least 1".into(),
        ));
    }
    let local = LocalEngine::start(
        on,
        &args.model,
        args.adapter.as_deref(),
        args.weights,
        "ember chat",
    )?;
    // Rendering fails here, before the first prompt, when the model has no tokenizer.
    local
        .codec
        .encode_chat(&[Message {
            role: "user".into(),
            content: "hi".into(),
        }])
        .map_err(|e| CliError::Usage(format!("--model: {e}")))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("ember chat: {} (/help for commands)", args.model.display());
    }
    let mut conversation = Conversation {
        system: args.system.clone(),
        turns: Vec::new(),
    };
    let mut stdout = std::io::stdout();
    let mut turn = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| CliError::Runtime(format!("reading stdin: {e}")))?;
        let input = line.trim();
        match input {
            "" => continue,
            "/quit" | "/exit" => break,
            "/help" => {
                println!("{HELP}");
                continue;
            }
            "/reset" => {
                conversation.turns.clear();
                println!("[conversation reset]");
                continue;
            }
            _ if input.starts_with("/system") => {
                let text = input.trim_start_matches("/system").trim();
                conversation.system = (!text.is_empty()).then(|| text.to_string());
                conversation.turns.clear();
                println!(
                    "[system message {}; conversation reset]",
                    if text.is_empty() { "cleared" } else { "set" }
                );
                continue;
            }
            _ if input.starts_with('/') => {
                println!("[unknown command {input}]\n{HELP}");
                continue;
            }
            _ => {}
        }
        conversation.turns.push(Message {
            role: "user".into(),
            content: input.to_string(),
        });
        // The oldest turns go first when the conversation leaves no room for a full reply.
        let max = local.codec.max_seq_len();
        let ids = loop {
            let ids = local
                .codec
                .encode_chat(&conversation.messages())
                .map_err(CliError::Runtime)?;
            if ids.len() + args.max_new_tokens <= max || conversation.turns.len() <= 1 {
                break ids;
            }
            conversation
                .turns
                .drain(..2.min(conversation.turns.len() - 1));
            eprintln!("[the conversation outgrew the context: the oldest turn was dropped]");
        };
        if ids.len() >= max {
            conversation.turns.pop();
            let what = if conversation.system.is_some() {
                "the system message and this message are"
            } else {
                "this message is"
            };
            println!("[{what} longer than the model's context of {max} tokens]");
            continue;
        }
        let sampling = SamplingConfig {
            temperature: args.temperature,
            top_k: (args.top_k > 0).then_some(args.top_k),
            top_p: (args.top_p < 1.0).then_some(args.top_p),
            min_p: None,
            seed: args.seed.wrapping_add(turn),
        };
        turn += 1;
        let params = local.params(sampling, args.max_new_tokens, &[]);
        let reply = local.complete(&[ids], &params, |_, piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        })?;
        println!();
        conversation.turns.push(Message {
            role: "assistant".into(),
            content: reply.into_iter().next().unwrap_or_default(),
        });
    }
    Ok(())
}
