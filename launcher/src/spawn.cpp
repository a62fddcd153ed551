#include "spawn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"

namespace pipeswap::launcher {
namespace {

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

// A free TCP port on the loopback interface for the workers' rendezvous.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  PS_CHECK(fd >= 0, CommError, "cannot open a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  PS_CHECK(ok, CommError, "cannot find a free port on 127.0.0.1 for the workers");
  return ntohs(addr.sin_port);
}

// SIGCONT follows the signal, as a shell's kill does for stopped jobs: a stopped worker (SIGSTOP, a
// debugger let go of) would otherwise hold a SIGTERM pending until the SIGKILL 10 s later.
void signal_all(const std::vector<pid_t>& pids, const std::vector<bool>& done, int sig) {
  for (size_t i = 0; i < pids.size(); ++i) {
    if (done[i]) continue;
    ::kill(pids[i], sig);
    ::kill(pids[i], SIGCONT);
  }
}

}  // namespace

int run_workers(int argc, char** argv, int workers) {
  const int port = free_port();
  log().info("single-node mode: starting {} worker processes (rendezvous on 127.0.0.1:{})", workers, port);
  std::vector<pid_t> pids;
  for (int r = 0; r < workers; ++r) {
    const pid_t pid = ::fork();
    PS_CHECK(pid >= 0, Error, "fork failed while starting worker {}", r);
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(workers).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(workers).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv(kSingleNodeWorkerEnv, "1", 1);
      std::vector<char*> args(argv, argv + argc);
      args.push_back(nullptr);
      ::execv("/proc/self/exe", args.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::vector<bool> done(pids.size(), false);
  int exit_code = 0;
  size_t remaining = pids.size();
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  while (remaining > 0) {
    int status = 0;
    // WUNTRACED: a stopped worker is a hung rank; its peers give up on it after --comm-timeout and
    // name it, and so does this process (it is the one that ends it).
    const pid_t pid = ::waitpid(-1, &status, WNOHANG | WUNTRACED);
    if (pid > 0) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (pids[i] != pid) continue;
        if (WIFSTOPPED(status)) {
          log().warn(
              "worker {} (rank {} on {}) was stopped by signal {}; its peers stop the job after --comm-timeout "
              "unless it continues",
              i, i, local_hostname(), WSTOPSIG(status));
          break;
        }
        done[i] = true;
        --remaining;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (code == 0) break;
        // Workers are this host's ranks 0..N-1: name the rank and host as the transports do. Every
        // worker that failed on its own is named (a peer may notice a killed worker and exit before
        // the killed one is reaped); those we stopped with SIGTERM are not.
        const bool stopped_by_us = stopping && WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM;
        // Exit codes 1 and 2 are pipeswap's own errors, which the worker has printed.
        const bool said_why = WIFEXITED(status) && (code == 1 || code == 2);
        if (said_why) {
          log().debug("worker {} exited with code {}{}", i, code, stopping ? "" : ": stopping the other workers");
        } else if (!stopped_by_us) {
          log().error("worker {} exited with code {} (rank {} on {}{}){}", i, code, i, local_hostname(),
                      WIFSIGNALED(status) ? fmt::format(", killed by signal {}", WTERMSIG(status)) : std::string(),
                      stopping ? "" : ": stopping the other workers");
        }
        if (exit_code == 0) exit_code = code;
        if (!stopping) {
          stopping = true;
          signal_all(pids, done, SIGTERM);
          stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        }
      }
      continue;
    }
    if (g_signal != 0 && !stopping) {
      log().warn("signal {}: stopping every worker", static_cast<int>(g_signal));
      stopping = true;
      exit_code = 128 + g_signal;
      signal_all(pids, done, SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
    if (std::chrono::steady_clock::now() > stop_deadline) {
      signal_all(pids, done, SIGKILL);  // a worker that ignores SIGTERM does not keep the job alive
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_code;
}

}  // namespace pipeswap::launcher
