#!/usr/bin/env node
/**
 * `run-batch` and `merge` on Node.js 20+: `node cli.mjs run-batch --model DIR -i IN -o OUT`.
 * The `Deno` namespace and WebGPU (Dawn) are installed before the CLI loads.
 *
 * @module
 */
import "./setup.ts";
import process from "node:process";
import { main } from "../cli.ts";

process.exit(await main(process.argv.slice(2)));
