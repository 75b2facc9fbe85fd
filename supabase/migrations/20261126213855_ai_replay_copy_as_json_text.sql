-- Written by hand (a data change): a call's replay copy (ai_calls.answer) is kept as its JSON
-- text, a jsonb string, so an answer holding a NUL or a lone surrogate is stored as escapes and
-- the replay answers the first answer's bytes (jsonb objects lose their key order). Copies kept
-- before (objects, at most 24 hours old) become their text.
update billing.ai_calls set answer = to_jsonb(answer::text) where jsonb_typeof(answer) = 'object';
