//! Build planning: resolves the global ARGs, expands each stage's FROM, picks the target stage,
//! and lists the stages it needs in build order (stages the target does not need are not built).

use std::collections::{BTreeMap, BTreeSet};

use super::{BuildError, BuildOptions, Platform};
use crate::dockerfile::{CopyInstr, Dockerfile, Instruction, Lexer};
use crate::reference::Reference;

/// What a stage starts from.
#[derive(Debug, Clone)]
pub(crate) enum Base {
    Scratch,
    Stage(usize),
    Image(Reference),
}

/// Where `COPY --from` reads: another stage or an image.
#[derive(Debug, Clone)]
pub(crate) enum CopyFrom {
    Stage(usize),
    Image(Reference),
}

/// The resolved shape of a build.
pub(crate) struct Plan {
    /// Global ARG values (declared before the first FROM), plus the predefined platform args.
    pub global_args: BTreeMap<String, String>,
    /// The base of each stage, by stage index.
    pub bases: Vec<Base>,
    /// Stage indexes to build, dependencies first; the last one is the target.
    pub order: Vec<usize>,
    /// The stages each planned stage needs built first (its base, `--from`, `from=`).
    pub deps: BTreeMap<usize, BTreeSet<usize>>,
}

impl Plan {
    pub fn new(
        dockerfile: &Dockerfile,
        opts: &BuildOptions,
        platform: &Platform,
    ) -> Result<Plan, BuildError> {
        let lexer = Lexer::new(dockerfile.escape);
        let mut global_args = super::platform::predefined_args(platform);
        for arg in &dockerfile.global_args {
            let value =
                match (opts.build_args.get(&arg.name), &arg.default) {
                    (Some(value), _) => Some(value.clone()),
                    (None, Some(default)) => {
                        let lookup = |name: &str| global_args.get(name).cloned();
                        Some(lexer.process_word(default, &lookup).map_err(|e| {
                            BuildError::step(&dockerfile.stages[0].location, "ARG", e)
                        })?)
                    }
                    (None, None) => None,
                };
            if let Some(value) = value {
                global_args.insert(arg.name.clone(), value);
            }
        }

        let mut bases = Vec::with_capacity(dockerfile.stages.len());
        for stage in &dockerfile.stages {
            let lookup = |name: &str| global_args.get(name).cloned();
            let from_text = format!("FROM {}", stage.base);
            let name = lexer
                .process_word(&stage.base, &lookup)
                .map_err(|e| BuildError::step(&stage.location, &from_text, e))?;
            if name.is_empty() {
                return Err(BuildError::step(
                    &stage.location,
                    &from_text,
                    "base name is empty after expanding build args",
                ));
            }
            let base = if name.eq_ignore_ascii_case("scratch") {
                Base::Scratch
            } else if let Some(index) = find_stage(dockerfile, &name, stage.index) {
                Base::Stage(index)
            } else {
                let reference = Reference::parse(&name)
                    .map_err(|e| BuildError::step(&stage.location, &from_text, e))?;
                Base::Image(reference.with_default_tag())
            };
            if let Some(requested) = &stage.platform {
                let expanded = lexer
                    .process_word(requested, &lookup)
                    .map_err(|e| BuildError::step(&stage.location, &from_text, e))?;
                if !Platform::parse(&expanded).is_ok_and(|p| p.matches(platform)) {
                    return Err(BuildError::UnsupportedPlatform {
                        requested: expanded,
                        host: platform.to_string(),
                    });
                }
            }
            bases.push(base);
        }

        let target = match &opts.target {
            Some(name) => dockerfile
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(name.to_lowercase().as_str()))
                .ok_or_else(|| BuildError::UnknownTarget(name.clone()))?,
            None => dockerfile.stages.len().saturating_sub(1),
        };

        let mut plan = Plan {
            global_args,
            bases,
            order: Vec::new(),
            deps: BTreeMap::new(),
        };
        let mut visiting = BTreeSet::new();
        plan.visit(dockerfile, target, &mut visiting)?;
        Ok(plan)
    }

    /// Adds `index` after every stage it depends on (depth-first).
    fn visit(
        &mut self,
        dockerfile: &Dockerfile,
        index: usize,
        visiting: &mut BTreeSet<usize>,
    ) -> Result<(), BuildError> {
        if self.order.contains(&index) || !visiting.insert(index) {
            return Ok(());
        }
        let mut deps = BTreeSet::new();
        if let Base::Stage(parent) = self.bases[index] {
            self.visit(dockerfile, parent, visiting)?;
            deps.insert(parent);
        }
        for located in &dockerfile.stages[index].instructions {
            let fail = |e: String| BuildError::step(&located.location, &located.source_text, e);
            let froms: Vec<String> = match &located.instruction {
                Instruction::Copy(copy) | Instruction::Add(copy) => {
                    copy.from.iter().cloned().collect()
                }
                Instruction::Run(run) => run
                    .mounts
                    .iter()
                    .filter_map(|m| {
                        m.split(',')
                            .find_map(|f| f.trim().strip_prefix("from=").map(str::to_string))
                    })
                    .collect(),
                _ => continue,
            };
            for from in froms {
                if let CopyFrom::Stage(dep) =
                    self.resolve_from(dockerfile, index, &from).map_err(fail)?
                {
                    self.visit(dockerfile, dep, visiting)?;
                    deps.insert(dep);
                }
            }
        }
        self.deps.insert(index, deps);
        self.order.push(index);
        Ok(())
    }

    /// Resolves `--from` of a COPY in stage `stage_index`: an earlier stage by name or number,
    /// else an image reference.
    pub fn copy_from(
        &self,
        dockerfile: &Dockerfile,
        stage_index: usize,
        copy: &CopyInstr,
    ) -> Result<Option<CopyFrom>, String> {
        let Some(from) = &copy.from else {
            return Ok(None);
        };
        self.resolve_from(dockerfile, stage_index, from).map(Some)
    }

    /// Resolves a `--from`/`from=` value used in stage `stage_index`: an earlier stage by
    /// name or number, else an image reference.
    pub fn resolve_from(
        &self,
        dockerfile: &Dockerfile,
        stage_index: usize,
        from: &str,
    ) -> Result<CopyFrom, String> {
        let lexer = Lexer::new(dockerfile.escape);
        let lookup = |name: &str| self.global_args.get(name).cloned();
        let from = lexer
            .process_word(from, &lookup)
            .map_err(|e| e.to_string())?;
        if let Ok(number) = from.parse::<usize>() {
            if number >= stage_index {
                return Err(format!(
                    "invalid --from={from}: stage {number} is not an earlier stage"
                ));
            }
            return Ok(CopyFrom::Stage(number));
        }
        if let Some(index) = find_stage(dockerfile, &from, stage_index) {
            return Ok(CopyFrom::Stage(index));
        }
        if dockerfile
            .stages
            .iter()
            .any(|s| s.name.as_deref() == Some(from.to_lowercase().as_str()))
        {
            return Err(format!(
                "invalid --from={from}: stage {from:?} is not defined before this instruction"
            ));
        }
        let reference = Reference::parse(&from)
            .map_err(|e| format!("--from={from} is neither a stage nor an image: {e}"))?;
        Ok(CopyFrom::Image(reference.with_default_tag()))
    }
}

/// The index of the stage named `name` (case-insensitive) defined before `before`.
fn find_stage(dockerfile: &Dockerfile, name: &str, before: usize) -> Option<usize> {
    let name = name.to_lowercase();
    dockerfile.stages[..before]
        .iter()
        .rposition(|s| s.name.as_deref() == Some(name.as_str()))
}
