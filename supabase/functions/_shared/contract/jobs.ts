// Request shape of POST /jobs: part of the contract (_shared/contract/index.ts).
import { z } from 'zod';
import { jsonObject } from '../values/pg-values.ts';
import { snakeName, tokenText } from '../values/text.ts';

export const CreateJobSchema = z.strictObject({
  type: snakeName(64),
  // Checked again, field by field, by the job type's own schema (types/).
  input: jsonObject({ depth: 8, entries: 1000, key: 64, text: 20_000 }),
  client_temp_id: tokenText(64).optional(),
});
export type CreateJob = z.infer<typeof CreateJobSchema>;
