package pgserver

import (
	"context"
	"fmt"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/postgres"
)

const (
	// dockerImage is the image Find runs when a Docker engine is available.
	dockerImage = "postgres:16-alpine"
	// dockerProbeTimeout bounds the check for a Docker engine, so machines
	// without one do not stall.
	dockerProbeTimeout = 2 * time.Second
)

// startContainer runs dockerImage with testcontainers-go. It first checks
// cheaply that a Docker engine answers, and turns testcontainers panics
// into errors.
func startContainer(ctx context.Context) (s *Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("testcontainers panicked: %v", r)
		}
	}()

	if err := probeDocker(ctx); err != nil {
		return nil, err
	}

	ctr, err := postgres.Run(ctx, dockerImage,
		postgres.WithDatabase("postgres"),
		postgres.WithUsername("postgres"),
		postgres.WithPassword("postgres"),
		// Replace the module's default "-c fsync=off" so that benchmark
		// numbers mean something, and match StartCluster's settings.
		testcontainers.WithCmd("postgres", "-c", "max_connections=200"),
		postgres.BasicWaitStrategies(),
	)
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return nil, fmt.Errorf("start %s container: %w", dockerImage, err)
	}
	url, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return nil, fmt.Errorf("get %s container address: %w", dockerImage, err)
	}
	return &Server{
		URL:    url,
		Source: "testcontainers (" + dockerImage + ")",
		close: func() error {
			if err := testcontainers.TerminateContainer(ctr); err != nil {
				return fmt.Errorf("terminate %s container: %w", dockerImage, err)
			}
			return nil
		},
	}, nil
}

// probeDocker reports whether a Docker engine answers within
// dockerProbeTimeout, looking for it where testcontainers-go does
// (DOCKER_HOST, ~/.testcontainers.properties, the default and rootless
// sockets). testcontainers-go caches the outcome for the process.
func probeDocker(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dockerProbeTimeout)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return fmt.Errorf("no Docker engine answered within %v: %w", dockerProbeTimeout, err)
	}
	return cli.Close()
}
