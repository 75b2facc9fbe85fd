-- Written by hand (a data change): an ai_completion job's input could ask for its content to be
-- kept (consent_level), whatever its student's consent. What jobs kept that way and no consent
-- of the student covers is deleted (a log written before ai_logs.org_id names no school: only
-- the student's own consent can cover it); its counts stay. Jobs not yet run lose the field,
-- which their input no longer accepts.
update billing.ai_logs l set consent_level = 'none', prompt_redacted = null, response_redacted = null
where l.job_id is not null and l.prompt_redacted is not null
  and not exists (select 1 from billing.ai_content_consent k where k.user_id = l.user_id);
update billing.jobs j set input = j.input - 'consent_level'
where j.input ? 'consent_level' and j.status in ('queued', 'processing');
