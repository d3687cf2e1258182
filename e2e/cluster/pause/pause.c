/*
 * The pod sandbox ("pause") process of the local test cluster: it holds the pod's
 * namespaces open and does nothing else. As PID 1 of the sandbox it must exit on
 * SIGTERM/SIGINT (PID 1 gets no default signal handling) and reap zombies, in case a
 * pod shares its process namespace.
 *
 * Built with `gcc -static` by build-pause.sh; the image holds only this binary.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static int install(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("codeexec pause 3.10");
        return 0;
    }
    if (install(SIGTERM, on_term) || install(SIGINT, on_term) || install(SIGCHLD, on_child)) {
        perror("sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
