// @scholarlink/billing-client is installed from this repository's client/ (`file:../../client`,
// a symlink out of this folder), and Turbopack reads no file outside its root: the root is the
// repository's, so it resolves. An app that installs the package from a registry needs none of this.
import { fileURLToPath } from 'node:url';

/** @type {import('next').NextConfig} */
export default {
  turbopack: { root: fileURLToPath(new URL('../..', import.meta.url)) },
};
