// The sandbox ("pause") process of a pod: it holds the pod's namespaces and does nothing
// until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// Children whose parents died (the pod's PID namespace) are reaped with SIGCHLD ignored.
	signal.Ignore(syscall.SIGCHLD)
	<-stop
}
