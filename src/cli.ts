#!/usr/bin/env node
/**
 * The `paligemma` command line: captions, questions, OCR, detection and segmentation on an
 * image, raw prompts, model inspection and checkpoint conversion. See `paligemma --help` and
 * docs/cli.md.
 *
 * Exit status: 0 on success, 2 on a usage error (unknown command or option, missing or
 * malformed argument, a command this version does not have), 1 on any other failure, 130 when
 * interrupted. Errors are printed as `paligemma: <CODE>: <message>`.
 *
 * @packageDocumentation
 * @internal
 */

import { parseArgs } from 'node:util'
import { AbortError, PaliGemmaError } from './errors.js'
import { CliError, MODEL_HELP, OUTPUT_HELP, SAMPLING_HELP, UsageError, err, flag, out, packageVersion } from './cli/args.js'
import type { Command, Parsed } from './cli/args.js'
import { interrupted, onSigint } from './cli/loading.js'
import { runBench } from './cli/checkpoints.js'
import { COMMANDS } from './cli/commands.js'

function helpText(): string {
  const names = Object.keys(COMMANDS)
  const width = Math.max(...names.map((n) => n.length)) + 2
  const list = names.map((name) => `  ${name.padEnd(width)}${COMMANDS[name]?.summary ?? ''}`).join('\n')
  return `paligemma ${packageVersion()}: PaliGemma and PaliGemma 2 on a native engine

Usage: paligemma <command> [options]

Commands:
${list}

Examples:
  paligemma caption --model google/paligemma2-3b-mix-224 --image cat.jpg
  paligemma ask --model ./paligemma2-3b-mix-224 --image cat.jpg "what color is the cat?"
  paligemma detect --model ./paligemma2-3b-mix-224 --image street.jpg car person --out boxes.png
  paligemma info google/paligemma2-3b-mix-224

Run 'paligemma <command> --help' for a command's options. Exit status: 0 ok, 1 failure, 2 usage error.
`
}

function commandHelp(name: string, command: Command): string {
  const sections = [`Usage: paligemma ${command.usage}`, `${command.summary}.`]
  if (command.details) sections.push(command.details)
  if ('device' in command.options) sections.push(MODEL_HELP)
  if ('max-new-tokens' in command.options) sections.push(SAMPLING_HELP)
  if ('json' in command.options) sections.push(OUTPUT_HELP)
  sections.push(`Exit status: 0 ok, 1 failure, 2 usage error. Run 'paligemma --help' for all commands (this is ${name}).`)
  return `${sections.join('\n\n')}\n`
}

// ---------------------------------------------------------------------------------------------
// Main

function parse(name: string, command: Command, argv: string[]): Parsed {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: command.options, allowPositionals: command.positionals, strict: true })
    return { command: name, values: values as Parsed['values'], positionals }
  } catch (error) {
    const code = (error as { code?: unknown }).code
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
      throw new UsageError((error as Error).message.replace(/\. To specify a positional argument.*$/s, '.'), name)
    }
    throw error
  }
}

/** Runs the CLI on `argv` (the arguments after `paligemma`) and resolves with the exit status. */
async function main(argv: string[]): Promise<number> {
  // `npx paligemma -- --help`: the `--` that keeps npx off the options is not ours.
  const [name, ...rest] = argv[0] === '--' ? argv.slice(1) : argv
  try {
    if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
      if (name === 'help' && rest[0] && COMMANDS[rest[0]]) {
        out.write(commandHelp(rest[0], COMMANDS[rest[0]] as Command))
        return 0
      }
      ;(name === undefined ? err : out).write(helpText())
      return name === undefined ? 2 : 0
    }
    if (name === '--version' || name === '-V') {
      out.write(`${packageVersion()}\n`)
      return 0
    }
    const command = COMMANDS[name]
    if (!command) {
      const hint = name.startsWith('-') ? `expected a command before '${name}'` : `unknown command '${name}'`
      throw new UsageError(`${hint}; commands: ${Object.keys(COMMANDS).join(', ')}`)
    }
    if (name === 'bench') {
      return await runBench(rest)
    }
    const args = parse(name, command, rest)
    if (flag(args.values, 'help')) {
      out.write(commandHelp(name, command))
      return 0
    }
    if (!command.positionals && args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}'`, name)
    return await command.run(args)
  } catch (error) {
    return report(error, name)
  }
}

function report(error: unknown, name: string | undefined): number {
  if (error instanceof UsageError) {
    const command = error.command ?? (name && COMMANDS[name] ? name : undefined)
    err.write(`paligemma: ERR_USAGE: ${error.message}\n`)
    err.write(command ? `Usage: paligemma ${COMMANDS[command]?.usage ?? command}\nRun 'paligemma ${command} --help' for details.\n` : "Run 'paligemma --help' for usage.\n")
    return 2
  }
  if (error instanceof AbortError && interrupted) {
    err.write('paligemma: interrupted\n')
    return 130
  }
  if (error instanceof PaliGemmaError || error instanceof CliError) {
    err.write(`paligemma: ${error.code}: ${error.message}\n`)
    return error instanceof CliError ? error.exitCode : 1
  }
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error)
  err.write(`paligemma: ERR_INTERNAL: ${message}\n`)
  return 1
}

out.on('error', (error: NodeJS.ErrnoException) => {
  // `paligemma caption ... | head -c 10`: the reader left; stop quietly.
  if (error.code === 'EPIPE') process.exit(0)
  throw error
})
process.on('SIGINT', onSigint)
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.exitCode = report(error, undefined)
  },
)
