// The job types. Adding one: write a module exporting a JobType (types.ts) and list it here.
import { aiCompletion } from './ai-completion.ts';
import { ledgerExport } from './ledger-export.ts';
import type { JobType } from './types.ts';

export const jobTypes: Record<string, JobType> = {
  ledger_export: ledgerExport,
  ai_completion: aiCompletion,
};
