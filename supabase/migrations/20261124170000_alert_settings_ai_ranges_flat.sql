-- The AI alerts' ranges written as flat comparisons: the constraint `between` built printed
-- differently from the one a migration re-creates, so the schema and the migrations disagreed.
alter table "billing"."alert_settings" drop constraint "alert_settings_ai_ranges";

alter table "billing"."alert_settings" add constraint "alert_settings_ai_ranges" check (ai_error_max_percent >= 0
  and ai_error_max_percent <= 100 and ai_ttft_p95_max_ms > 0 and ai_window_minutes >= 1 and ai_window_minutes <= 1440
  and ai_window_calls >= 1 and ai_window_calls <= 100000 and ai_min_calls >= 1 and ai_min_calls <= ai_window_calls);
