/* The real node's pod sandbox process (containerd's sandbox_image): hold the pod's namespaces,
 * reap orphaned children, exit on SIGINT/SIGTERM. Built static by localcluster.realnode into a
 * FROM-scratch image, because no registry (and so no registry.k8s.io/pause) is reachable. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = stop;
    sigaction(SIGINT, &sa, 0);
    sigaction(SIGTERM, &sa, 0);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, 0);
    for (;;) {
        pause();
    }
}
