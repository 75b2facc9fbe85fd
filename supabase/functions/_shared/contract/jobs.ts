// Request shape of POST /jobs: part of the contract (_shared/contract/index.ts).
import { z } from 'zod';
import { jsonObject, pgText } from '../values/pg-values.ts';
import { snakeName } from '../values/text.ts';

export const CreateJobSchema = z.strictObject({
  type: snakeName(64),
  // Checked again, field by field, by the job type's own schema (types/).
  input: jsonObject({ depth: 8, entries: 1000, key: 64, text: 20_000 }),
  client_temp_id: pgText(64).min(1).regex(/^[\x21-\x7e]+$/).optional(),
});
export type CreateJob = z.infer<typeof CreateJobSchema>;
