//! Where workers put the rows they rejected: one report per task, which `vera reconcile`
//! reads back.

pub const REJECTS_PREFIX: &str = "reports/rejects/";

/// Key of a task's rejects report (`/` and `:` of the task id become `_`).
pub fn rejects_report_key(task_id: &str) -> String {
    format!("{REJECTS_PREFIX}{}.json", task_id.replace(['/', ':'], "_"))
}
