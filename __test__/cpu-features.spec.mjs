// The x64 addon is built for AVX2, FMA and F16C (.cargo/config.toml). On an older CPU it would
// die with SIGILL while loading, so the loader reads the CPU's flags first and refuses with
// ERR_DEVICE_UNAVAILABLE (issue 25). The end-to-end case runs node under qemu emulating a
// Westmere CPU (no AVX2), with PALIGEMMA_CPUINFO pointing at a Westmere cpuinfo (qemu-user shows
// the host's flags otherwise); the control run, with the host's flags, shows the SIGILL the
// check prevents.
import { execFile, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { missingFromCpuinfo } from '../dist/src/cpu.js'
import { fixtureDir, repo } from './helpers/fixtures.mjs'

// /proc/cpuinfo flags of two real CPUs: an Intel Xeon X5670 (Westmere, 2010) and an i7-4770 (Haswell, 2013).
const WESTMERE = 'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 cx16 xtpr pdcm pcid dca sse4_1 sse4_2 popcnt aes lahf_lm epb pti tpr_shadow vnmi flexpriority ept vpid dtherm ida arat'
const HASWELL = 'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm cpuid_fault epb invpcid_single pti ssbd ibrs ibpb stibp tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid xsaveopt dtherm ida arat pln pts md_clear flush_l1d'
const cpuinfo = (flags) => `processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: ${flags}\n\nprocessor\t: 1\nflags\t\t: ${flags}\n`

test('missingFromCpuinfo reads the flags line', (t) => {
  t.deepEqual(missingFromCpuinfo(cpuinfo(WESTMERE)), ['avx2', 'fma', 'f16c'])
  t.deepEqual(missingFromCpuinfo(cpuinfo(HASWELL)), [])
  t.deepEqual(missingFromCpuinfo(cpuinfo(HASWELL.replace(' f16c', ''))), ['f16c'])
  t.deepEqual(missingFromCpuinfo(''), ['avx2', 'fma', 'f16c'], 'no flags line: nothing is assumed')
})

function runUnderQemu(fakeCpuinfo) {
  const script = `import(${JSON.stringify(join(repo, 'dist', 'index.js'))}).then((m) => m.PaliGemma.load(${JSON.stringify(fixtureDir('pg1-tiny-a'))}))` +
    `.then(() => console.log('LOADED'), (e) => console.log('REFUSED', e.code, e.message))`
  const env = { ...process.env, PALIGEMMA_NO_CUDA: '1', ...(fakeCpuinfo ? { PALIGEMMA_CPUINFO: fakeCpuinfo } : {}) }
  if (!fakeCpuinfo) delete env.PALIGEMMA_CPUINFO
  return new Promise((resolve) =>
    execFile('qemu-x86_64', ['-cpu', 'Westmere', process.execPath, '-e', script], { timeout: 240_000, env }, (error, stdout, stderr) =>
      resolve({ code: error?.code ?? 0, signal: error?.signal, stdout, stderr }),
    ),
  )
}

test('on a CPU without AVX2 (qemu -cpu Westmere), load() refuses with ERR_DEVICE_UNAVAILABLE instead of dying with SIGILL', async (t) => {
  if (spawnSync('qemu-x86_64', ['--version']).error) throw new Error('qemu-x86_64 is missing: apt-get install qemu-user (.ci/run does this)')
  const fake = join(tmpdir(), `paligemma-westmere-cpuinfo-${process.pid}`)
  writeFileSync(fake, cpuinfo(WESTMERE))
  const old = await runUnderQemu(fake)
  t.is(old.code, 0, old.stderr)
  t.regex(old.stdout, /^REFUSED ERR_DEVICE_UNAVAILABLE this CPU lacks AVX2, FMA, F16C/m)
  // The control: the same emulated CPU, with the host's flags visible, loads the addon and dies.
  const unguarded = await runUnderQemu(undefined)
  t.notRegex(unguarded.stdout, /LOADED|REFUSED/)
  t.true(unguarded.code === 132 || unguarded.signal === 'SIGILL' || /Illegal instruction/.test(unguarded.stderr), `control: ${unguarded.code} ${unguarded.signal} ${unguarded.stderr.slice(-200)}`)
})
