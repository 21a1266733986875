/*
 * reaper: run one command as a child subreaper and account for every process it causes.
 *
 *     reaper RESULT_FILE PID_FD LINGER_MS -- COMMAND [ARGS...]
 *
 * Built by bench/measure.py (`cc -O2`) the first time it is needed. Why a C helper and not
 * measure.py itself: a child's ru_maxrss starts at its parent's peak RSS (the kernel carries the
 * old mm's high-water mark over exec, and a vfork()ed child shares its parent's mm), so a command
 * spawned from Python would report Python's 16 MB as its own peak. This process is small and
 * uses fork(), so the command's ru_maxrss is the command's.
 *
 * It makes itself a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER): a descendant whose parent
 * exits is re-parented here instead of to PID 1. It forks COMMAND (stdin/stdout/stderr shared),
 * writes its pid as decimal text to PID_FD (measure.py samples /proc with it) and waits for it:
 * that is the wall time. Then every process still here is an orphan that COMMAND left behind:
 * they are waited for (up to LINGER_MS, then SIGKILLed) and reaped one by one, each with its
 * name, rusage and how long after COMMAND's exit it was reaped. RESULT_FILE gets one JSON object.
 *
 * CPU: wait4()'s rusage of a process covers it and every descendant it waited for; adding the
 * orphans' rusage covers everything else. ru_maxrss is the largest single process.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(const struct rusage *ru) {
    return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 +
           (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
}

/* The process name from /proc/PID/stat (still there for a zombie), JSON-safe. */
static void comm(pid_t pid, char *out, size_t n) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    snprintf(out, n, "?");
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    char *a = strchr(buf, '('), *b = strrchr(buf, ')');
    if (!a || !b || b <= a) return;
    size_t j = 0;
    for (char *c = a + 1; c < b && j + 1 < n; c++)
        out[j++] = (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) ? '_' : *c;
    out[j] = 0;
}

int main(int argc, char **argv) {
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: reaper RESULT_FILE PID_FD LINGER_MS -- COMMAND [ARGS...]\n");
        return 2;
    }
    const char *result = argv[1];
    int pid_fd = atoi(argv[2]);
    double linger = atof(argv[3]) / 1000.0;
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        perror("reaper: prctl(PR_SET_CHILD_SUBREAPER)");
        return 2;
    }
    double t0 = now();
    pid_t main_pid = fork();
    if (main_pid < 0) {
        perror("reaper: fork");
        return 2;
    }
    if (main_pid == 0) {
        close(pid_fd);
        execvp(argv[5], argv + 5);
        fprintf(stderr, "reaper: cannot run %s: %s\n", argv[5], strerror(errno));
        _exit(127);
    }
    dprintf(pid_fd, "%d\n", (int)main_pid);
    close(pid_fd);

    int status;
    struct rusage ru;
    while (wait4(main_pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("reaper: wait4");
            return 2;
        }
    }
    double t_main = now();
    double total_cpu = cpu(&ru);
    long maxrss = ru.ru_maxrss;

    FILE *out = fopen(result, "w");
    if (!out) {
        perror("reaper: result file");
        return 2;
    }
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    fprintf(out, "{\"pid\": %d, \"rc\": %d, \"wall_s\": %.6f, \"main_cpu_s\": %.6f, \"main_maxrss_kib\": %ld, \"orphans\": [",
            (int)main_pid, rc, t_main - t0, cpu(&ru), ru.ru_maxrss);

    /* Orphans: wait without reaping first (WNOWAIT) so that the name can still be read. */
    int first = 1, killed = 0;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left */
        }
        if (si.si_pid == 0) {
            if (!killed && now() - t_main > linger) {
                /* kill every child still running (they are all orphans by now) */
                killed = 1;
                char path[64];
                snprintf(path, sizeof path, "/proc/%d/task", (int)getpid());
                DIR *d = opendir(path);
                struct dirent *e;
                while (d && (e = readdir(d))) {
                    if (e->d_name[0] == '.') continue;
                    char cp[300];
                    snprintf(cp, sizeof cp, "/proc/%d/task/%s/children", (int)getpid(), e->d_name);
                    FILE *f = fopen(cp, "r");
                    int c;
                    while (f && fscanf(f, "%d", &c) == 1) kill(c, SIGKILL);
                    if (f) fclose(f);
                }
                if (d) closedir(d);
            }
            usleep(500);
            continue;
        }
        char name[64];
        comm(si.si_pid, name, sizeof name);
        struct rusage oru;
        int ost;
        if (wait4(si.si_pid, &ost, 0, &oru) < 0) continue;
        total_cpu += cpu(&oru);
        if (oru.ru_maxrss > maxrss) maxrss = oru.ru_maxrss;
        fprintf(out, "%s{\"pid\": %d, \"name\": \"%s\", \"reaped_after_s\": %.6f, \"cpu_s\": %.6f, \"maxrss_kib\": %ld, \"killed\": %s}",
                first ? "" : ", ", (int)si.si_pid, name, now() - t_main, cpu(&oru), oru.ru_maxrss,
                killed ? "true" : "false");
        first = 0;
    }
    fprintf(out, "], \"cpu_s\": %.6f, \"maxrss_kib\": %ld}\n", total_cpu, maxrss);
    fclose(out);
    return 0;
}
