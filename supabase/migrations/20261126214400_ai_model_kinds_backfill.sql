-- Data: every card and open draft that prices no answer (output and reasoning at 0) is an
-- embedding model's: the only kind whose card may price input only (billing.publish_rate_card
-- refuses such a chat card). Its models are then served by the embeddings API alone. Rate cards
-- are never edited otherwise: the immutability trigger is off for this one statement only.
alter table billing.rate_cards disable trigger rate_cards_immutable;
update billing.rate_cards r set kind = 'embedding'
where r.usd_per_million_output = 0 and coalesce(r.usd_per_million_reasoning, 0) = 0;
alter table billing.rate_cards enable trigger rate_cards_immutable;

update billing.rate_card_drafts d set kind = 'embedding'
where d.status = 'draft' and d.usd_per_million_output = 0 and coalesce(d.usd_per_million_reasoning, 0) = 0;
