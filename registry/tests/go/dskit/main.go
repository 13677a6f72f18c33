// Command dskitcompat drives a real tool built on HashiCorp's Go client: the Consul KV client
// of grafana/dskit (the ring store of Mimir, Loki and Cortex: CAS loops and blocking
// WatchKey/WatchPrefix) against a running berth registry. One line per behaviour, "ok" or
// "FAIL"; exit 1 if any failed. run.sh builds it only when the vendor directory holds dskit.
//
// Environment: BERTH_ADDR, BERTH_TOKEN (as for gocompat).
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/grafana/dskit/flagext"
	"github.com/grafana/dskit/kv/codec"
	"github.com/grafana/dskit/kv/consul"
	"github.com/prometheus/client_golang/prometheus"
)

var failed, total int

func step(name string, f func() error) {
	total++
	if err := f(); err != nil {
		failed++
		fmt.Printf("FAIL %s: %v\n", name, err)
	} else {
		fmt.Printf("ok   %s\n", name)
	}
}

func main() {
	addr := os.Getenv("BERTH_ADDR")
	client, err := consul.NewClient(consul.Config{
		Host:              addr,
		ACLToken:          flagext.SecretWithValue(os.Getenv("BERTH_TOKEN")),
		HTTPClientTimeout: 20 * time.Second,
		CasRetryDelay:     20 * time.Millisecond,
		MaxCasRetries:     200,
	}, codec.String{}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("# dskit consul kv against %s\n", addr)
	ctx := context.Background()

	step("dskit: CAS creates a missing key, Get reads it", func() error {
		err := client.CAS(ctx, "dskit/ring", func(in interface{}) (interface{}, bool, error) {
			if in != nil {
				return nil, false, fmt.Errorf("key exists: %v", in)
			}
			return "0", true, nil
		})
		if err != nil {
			return err
		}
		v, err := client.Get(ctx, "dskit/ring")
		if err != nil || v != "0" {
			return fmt.Errorf("get %v %v", v, err)
		}
		return nil
	})
	step("dskit: concurrent CAS loops lose no update", func() error {
		const writers, each = 4, 5
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					err := client.CAS(ctx, "dskit/ring", func(in interface{}) (interface{}, bool, error) {
						n, err := strconv.Atoi(in.(string))
						if err != nil {
							return nil, false, err
						}
						return strconv.Itoa(n + 1), true, nil
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			return err
		}
		v, err := client.Get(ctx, "dskit/ring")
		if err != nil || v != strconv.Itoa(writers*each) {
			return fmt.Errorf("after %d increments: %v %v", writers*each, v, err)
		}
		return nil
	})
	step("dskit: WatchKey sees a later value", func() error {
		seen := make(chan string, 16)
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		go client.WatchKey(wctx, "dskit/ring", func(v interface{}) bool {
			seen <- v.(string)
			return v.(string) != "done"
		})
		time.Sleep(300 * time.Millisecond)
		if err := client.CAS(ctx, "dskit/ring", func(interface{}) (interface{}, bool, error) { return "done", true, nil }); err != nil {
			return err
		}
		for {
			select {
			case v := <-seen:
				if v == "done" {
					return nil
				}
			case <-wctx.Done():
				return fmt.Errorf("the watch never saw the new value")
			}
		}
	})
	step("dskit: WatchPrefix sees a new key, List and Delete", func() error {
		seen := make(chan string, 16)
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		go client.WatchPrefix(wctx, "dskit/", func(key string, _ interface{}) bool {
			seen <- key
			return key != "dskit/member-2"
		})
		time.Sleep(300 * time.Millisecond)
		if err := client.CAS(ctx, "dskit/member-2", func(interface{}) (interface{}, bool, error) { return "up", true, nil }); err != nil {
			return err
		}
		found := false
		for !found {
			select {
			case k := <-seen:
				found = k == "dskit/member-2"
			case <-wctx.Done():
				return fmt.Errorf("the prefix watch never saw dskit/member-2")
			}
		}
		keys, err := client.List(ctx, "dskit/")
		if err != nil || len(keys) != 2 {
			return fmt.Errorf("list %v %v", keys, err)
		}
		if err := client.Delete(ctx, "dskit/member-2"); err != nil {
			return err
		}
		v, err := client.Get(ctx, "dskit/member-2")
		if err != nil || v != nil {
			return fmt.Errorf("after delete %v %v", v, err)
		}
		return nil
	})
	fmt.Printf("# %d behaviours, %d failed (dskit)\n", total, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
