// Single-node multi-device mode: `pipeswap run --device-chain cuda:0=60,cuda:1=40` started with no
// launcher runs one worker process per chain entry itself.
//
// Processes, not threads: each worker then has its own LibTorch thread pools and CUDA context, a
// crashed worker cannot take the others' memory down with it, and the workers run exactly the code
// path of a torchrun-style launch (TCP rendezvous on 127.0.0.1, NCCL between GPUs), so this mode
// gives the same results as mpirun. The parent only supervises: it forwards Ctrl-C / SIGTERM, and
// when any worker fails it stops the others and exits non-zero.
#pragma once

namespace pipeswap::launcher {

// Set in each worker's environment: a worker that stops because another one aborted the job stays
// quiet, since the one that aborted has printed why on the same terminal.
constexpr const char* kSingleNodeWorkerEnv = "PIPESWAP_SINGLE_NODE_WORKER";

// Runs `argv` again as `workers` processes with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
// MASTER_PORT set, waits for them, and returns the exit code for the whole job (0 only when every
// worker exited 0).
int run_workers(int argc, char** argv, int workers);

}  // namespace pipeswap::launcher
