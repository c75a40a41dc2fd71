//! Exec processes: Exec registers one (its spec and stdio paths are checked at once), Start
//! runs `runtime exec --detach`, Kill signals its pid, Delete forgets it once it exited.
//! An exec's exit is routed through the same reaper path as init's.

use std::sync::Arc;

use berth_proto::shim::{event::Kind, ExecAdded, ExecRequest, ExecStarted};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::args;
use crate::container::{no_exec, not_created, read_pid, Inner};
use crate::error::{Error, Result};
use crate::journal::write_atomic;
use crate::process::{exit_file, watch_exit, ExitRecord, Phase, Proc};
use crate::stdio;

/// Exec ids become file names: keep them to a safe alphabet.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Inner {
    /// Register an exec (it runs on Start).
    pub fn add_exec(&self, req: ExecRequest) -> Result<()> {
        if !valid_id(&req.exec_id) {
            return Err(Error::InvalidArgument(format!(
                "invalid exec id {:?}",
                req.exec_id
            )));
        }
        let stdio = req.stdio.unwrap_or_default();
        stdio::kind("stdin", &stdio.stdin)?;
        stdio::kind("stdout", &stdio.stdout)?;
        if !stdio.terminal {
            stdio::kind("stderr", &stdio.stderr)?;
        }
        let spec: serde_json::Value = serde_json::from_slice(&req.process_json)
            .map_err(|e| Error::InvalidArgument(format!("exec process spec is not JSON: {e}")))?;
        if !spec.is_object() {
            return Err(Error::InvalidArgument(
                "exec process spec must be a JSON object".into(),
            ));
        }
        {
            let mut st = self.state();
            match st.init.as_ref() {
                None => return Err(not_created(&self.id)),
                Some(p) if p.phase == Phase::Stopped || st.deleted => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} is not running",
                        self.id
                    )))
                }
                Some(_) => {}
            }
            if st.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {:?} already exists",
                    req.exec_id
                )));
            }
            let mut p = Proc::new(&req.exec_id, stdio);
            p.spec = req.process_json;
            st.execs.insert(req.exec_id.clone(), p);
        }
        self.journal.emit(Kind::ExecAdded(ExecAdded {
            exec_id: req.exec_id,
        }))?;
        Ok(())
    }

    /// Start a registered exec.
    pub async fn start_exec(self: &Arc<Self>, exec_id: &str) -> Result<u32> {
        let _op = self.op().await;
        let mut proc = {
            let st = self.state();
            let p = st.execs.get(exec_id).ok_or_else(|| no_exec(exec_id))?;
            if p.phase != Phase::Created {
                return Err(Error::FailedPrecondition(format!(
                    "exec {exec_id:?} is already started"
                )));
            }
            let mut proc = Proc::new(exec_id, p.stdio.clone());
            proc.spec = p.spec.clone();
            proc
        };
        let dir = self.bundle.join("execs");
        std::fs::create_dir_all(&dir).map_err(|e| Error::path("creating", &dir, e))?;
        let spec_file = dir.join(format!("{exec_id}.json"));
        let pid_file = dir.join(format!("{exec_id}.pid"));
        write_atomic(&spec_file, &proc.spec)?;
        let _ = std::fs::remove_file(&pid_file);
        let (fds, term) = self.open_stdio(&mut proc).await?;
        let mut args = args![
            "exec",
            "--process",
            &spec_file,
            "--detach",
            "--pid-file",
            &pid_file
        ];
        if let Some((_, sock)) = &term {
            args.extend(args!["--console-socket", &sock.path]);
        }
        args.push((&self.id).into());
        let (term, sock) = term.unzip();
        let master = self.run_with_console(args, fds, sock.as_ref()).await?;
        drop(sock);
        let pid = read_pid(&pid_file)?;
        let exit = self.reaper.subscribe(pid as i32);
        let io_done = Self::start_console(&mut proc, term, master)?;
        let gate = {
            let mut st = self.state();
            // Update the registered entry in place so a pending Wait keeps its receiver.
            let slot = st
                .execs
                .entry(exec_id.to_string())
                .or_insert_with(|| Proc::new(exec_id, proc.stdio.clone()));
            slot.pid = pid;
            slot.phase = Phase::Running;
            slot.holders = std::mem::take(&mut proc.holders);
            slot.console = proc.console.take();
            slot.spec = Vec::new();
            slot.gate.send_replace(true);
            slot.gate.subscribe()
        };
        let res = self.journal.emit(Kind::ExecStarted(ExecStarted {
            exec_id: exec_id.to_string(),
            pid,
        }));
        watch_exit(self.clone(), exec_id.to_string(), exit, gate, io_done);
        res?;
        Ok(pid)
    }

    /// Signal an exec process.
    pub fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<()> {
        let st = self.state();
        let p = st.execs.get(exec_id).ok_or_else(|| no_exec(exec_id))?;
        match p.phase {
            Phase::Created => Err(Error::FailedPrecondition(format!(
                "exec {exec_id:?} is not started"
            ))),
            Phase::Stopped => Err(Error::NotFound(format!(
                "exec {exec_id:?} has already exited"
            ))),
            Phase::Running => {
                let sig = Signal::try_from(signal as i32)
                    .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
                kill(Pid::from_raw(p.pid as i32), sig)
                    .map_err(|e| Error::sys(format!("signalling exec {exec_id:?}"), e))
            }
        }
    }

    /// Forget an exec that has exited (or never started).
    pub fn delete_exec(&self, exec_id: &str) -> Result<ExitRecord> {
        let mut st = self.state();
        let p = st.execs.get(exec_id).ok_or_else(|| no_exec(exec_id))?;
        if p.phase == Phase::Running {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id:?} is running: kill it first"
            )));
        }
        let rec = p.exited().unwrap_or(ExitRecord {
            pid: p.pid,
            status: 0,
            at: std::time::UNIX_EPOCH,
        });
        st.execs.remove(exec_id);
        drop(st);
        let dir = self.bundle.join("execs");
        for ext in ["json", "pid", "sock"] {
            let _ = std::fs::remove_file(dir.join(format!("{exec_id}.{ext}")));
        }
        let _ = std::fs::remove_file(exit_file(&self.bundle, exec_id));
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn exec_ids_are_file_safe() {
        assert!(valid_id("exec-1_a.b"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(129)));
    }
}
