#!/usr/bin/env node
// The least a Node stage of a pipe can do with a byte stream: copy stdin to stdout, with
// backpressure, nothing else. bench/zstd.mjs puts it between the standard tools to measure the
// floor of sbk's shape (Node processes in the byte path) on this machine, beside sbk itself.
import { pipeline } from 'node:stream/promises';

await pipeline(process.stdin, process.stdout);
