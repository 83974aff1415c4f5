//! The operations a rule may use.

/// The operations a rule may use: JsonLogic's and flagd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Gt,
    Ge,
    Lt,
    Le,
    Max,
    Min,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Map,
    Filter,
    Reduce,
    All,
    Some,
    None,
    Merge,
    In,
    Cat,
    Substr,
    Missing,
    MissingSome,
    Fractional,
    SemVer,
    StartsWith,
    EndsWith,
}

impl Op {
    pub(crate) fn named(name: &str) -> Option<Op> {
        Some(match name {
            "if" | "?:" => Op::If,
            "==" => Op::Eq,
            "===" => Op::StrictEq,
            "!=" => Op::Ne,
            "!==" => Op::StrictNe,
            "!" => Op::Not,
            "!!" => Op::NotNot,
            "or" => Op::Or,
            "and" => Op::And,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "max" => Op::Max,
            "min" => Op::Min,
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "map" => Op::Map,
            "filter" => Op::Filter,
            "reduce" => Op::Reduce,
            "all" => Op::All,
            "some" => Op::Some,
            "none" => Op::None,
            "merge" => Op::Merge,
            "in" => Op::In,
            "cat" => Op::Cat,
            "substr" => Op::Substr,
            "missing" => Op::Missing,
            "missing_some" => Op::MissingSome,
            "fractional" => Op::Fractional,
            "sem_ver" => Op::SemVer,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            _ => return None,
        })
    }

    /// Operations whose arguments are evaluated lazily, in their own order or scope.
    pub(crate) fn lazy(self) -> bool {
        matches!(
            self,
            Op::If
                | Op::Or
                | Op::And
                | Op::Map
                | Op::Filter
                | Op::Reduce
                | Op::All
                | Op::Some
                | Op::None
        )
    }
}

/// The names of every operation a rule may use, for error messages and the guide.
pub const OPERATIONS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    ">",
    ">=",
    "<",
    "<=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "map",
    "filter",
    "reduce",
    "all",
    "some",
    "none",
    "merge",
    "in",
    "cat",
    "substr",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
];
