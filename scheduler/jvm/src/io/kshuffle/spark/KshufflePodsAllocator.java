package io.kshuffle.spark;

import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.fabric8.kubernetes.api.model.Container;
import io.fabric8.kubernetes.api.model.EnvVar;
import io.fabric8.kubernetes.api.model.Pod;
import io.fabric8.kubernetes.api.model.PodBuilder;
import io.fabric8.kubernetes.client.KubernetesClient;
import io.fabric8.kubernetes.client.utils.Serialization;
import org.apache.spark.SecurityManager;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.SparkContext$;
import org.apache.spark.deploy.k8s.KubernetesConf;
import org.apache.spark.deploy.k8s.KubernetesExecutorConf;
import org.apache.spark.deploy.k8s.KubernetesExecutorSpec;
import org.apache.spark.resource.ResourceProfile;
import org.apache.spark.resource.ResourceProfile$;
import org.apache.spark.scheduler.cluster.k8s.AbstractPodsAllocator;
import org.apache.spark.scheduler.cluster.k8s.ExecutorPodsSnapshotsStore;
import org.apache.spark.scheduler.cluster.k8s.KubernetesClusterSchedulerBackend;
import org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBuilder;
import org.apache.spark.util.Clock;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Option;
import scala.Tuple2;

/**
 * Spark's executor pod allocator, handed to kshuffle-scheduler: set
 * {@code spark.kubernetes.allocation.pods.allocator=io.kshuffle.spark.KshufflePodsAllocator}
 * (Spark 3.3+; checked with 3.5.9 and 4.3.0) and put this class's jar on the driver's class path.
 *
 * <p>When the application starts, the driver's own executor builder makes the executor pod Spark
 * would create (image, resources, driver URL, volumes, JVM options, pod template: every
 * {@code spark.kubernetes.executor.*} setting applies as with Spark's allocator), and this
 * allocator starts {@code kshuffle-scheduler} as a child process with that pod and the
 * allocation settings. From then on Spark's {@code requestTotalExecutors} goes to the scheduler's
 * HTTP API, which creates and deletes the pods (batches, the cap on pending pods, timeouts for
 * pods that never start). The scheduler stops with the driver: it stops when its standard input,
 * held by this JVM, closes.
 *
 * <p>Settings: {@code spark.kshuffle.scheduler.binary} (the program, default
 * {@code kshuffle-scheduler} on the PATH), {@code spark.kshuffle.scheduler.startTimeout}
 * (default 60s), {@code spark.kshuffle.scheduler.kubeUrl} (the API server for the scheduler;
 * default: the driver's when it is plain HTTP, else the scheduler's in-cluster or kubeconfig
 * settings), {@code spark.kshuffle.scheduler.pollInterval} (default 500ms).
 *
 * <p>Limits: the default resource profile only (executors of other profiles are refused with a
 * log line); no executor-specific resources (on-demand persistent volume claims).
 */
public final class KshufflePodsAllocator extends AbstractPodsAllocator {
    private static final Logger LOG = LoggerFactory.getLogger(KshufflePodsAllocator.class);

    /** The executor id the template pod is built for, replaced per executor by the scheduler. */
    static final String PLACEHOLDER_ID = "7777777777";
    private static final String EXEC_ID_LABEL = "spark-exec-id";
    private static final String EXEC_ID_ENV = "SPARK_EXECUTOR_ID";
    /** Failed starts in a row after which no new scheduler is started. */
    private static final int MAX_FAILED_STARTS = 8;
    /** A scheduler that ran this long before exiting resets the count of failed starts. */
    private static final int STABLE_SECONDS = 60;

    /** Keys of the driver's conf the scheduler reads (the rest of the conf stays here). */
    private static final String[] PASSED_PREFIXES = {
        "spark.dynamicAllocation.", "spark.kubernetes.", "spark.executor.", "spark.shuffle.service.",
    };
    private static final String[] PASSED_KEYS = {"spark.task.cpus", "spark.driver.host", "spark.driver.port"};
    /** Never written to disk: credentials. */
    private static final String WITHHELD_PREFIX = "spark.kubernetes.authenticate.";

    private final SparkConf conf;
    private final SecurityManager securityManager;
    private final KubernetesExecutorBuilder builder;
    private final KubernetesClient client;
    private final String namespace;
    private final Option<Pod> driverPod;
    private final Set<Long> deleted = ConcurrentHashMap.newKeySet();
    /** The highest executor id seen (in the scheduler's events or from Spark): a scheduler
     * started again begins above it, so no id the driver has seen is reused. */
    private final AtomicLong maxId = new AtomicLong();
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
    private final ObjectMapper json = new ObjectMapper();
    /** The scheduler's API token: its port is on the loopback, which a pod on the host
     * network shares with the node. */
    private final String token = newToken();

    private volatile boolean stopping;
    /** The executor pod names' prefix, {@code <prefix>-exec-<id>}. */
    private String prefix;
    /** The name of the executor container in the pod (the builder adds it last). */
    private String containerName;
    private Path dir;
    private List<String> command;
    private Process process;
    private URI base;
    private Thread poller;
    private int failedStarts;
    private long startedAtMs;
    /** The total Spark asked for, and whether the scheduler has it. Guarded by {@code this}. */
    private int wanted = -1;
    private boolean sent = true;
    /** Held for the whole of one send of the total. */
    private final Object sendLock = new Object();
    private boolean refusedProfiles;

    /** The constructor Spark's {@code KubernetesClusterManager} calls by reflection. */
    public KshufflePodsAllocator(
            SparkConf conf,
            SecurityManager securityManager,
            KubernetesExecutorBuilder builder,
            KubernetesClient client,
            ExecutorPodsSnapshotsStore snapshotsStore,
            Clock clock) {
        this.conf = conf;
        this.securityManager = securityManager;
        this.builder = builder;
        this.client = client;
        this.namespace = conf.get("spark.kubernetes.namespace", "default");
        String driverName = conf.get("spark.kubernetes.driver.pod.name", null);
        if (driverName == null) {
            this.driverPod = Option.empty();
        } else {
            Pod pod = client.pods().inNamespace(namespace).withName(driverName).get();
            if (pod == null) {
                throw new IllegalStateException("No pod was found named " + driverName
                        + " in the cluster in the namespace " + namespace
                        + " (this was supposed to be the driver pod.).");
            }
            this.driverPod = Option.apply(pod);
        }
    }

    @Override
    public Option<Pod> driverPod() {
        return driverPod;
    }

    @Override
    public void start(String applicationId, KubernetesClusterSchedulerBackend backend) {
        try {
            dir = Files.createTempDirectory("kshuffle-scheduler-");
            Pod pod = executorPod(applicationId);
            Path podFile = dir.resolve("executor-pod.json");
            Files.write(podFile, Serialization.asJson(pod).getBytes(StandardCharsets.UTF_8));
            Path props = dir.resolve("spark.properties");
            Files.write(props, properties(applicationId).getBytes(StandardCharsets.UTF_8));
            command = new ArrayList<>();
            command.add(conf.get("spark.kshuffle.scheduler.binary", "kshuffle-scheduler"));
            command.add("--listen=127.0.0.1:0");
            command.add("--address-file=" + dir.resolve("address"));
            command.add("--stop-on-stdin-eof");
            Path tokenFile = dir.resolve("api-token");
            Files.write(tokenFile, token.getBytes(StandardCharsets.UTF_8));
            Files.setPosixFilePermissions(tokenFile, PosixFilePermissions.fromString("rw-------"));
            command.add("--api-token-file=" + tokenFile);
            command.add("--spark-executor-pod=" + podFile);
            command.add("--properties-file=" + props);
            String kubeUrl = conf.get("spark.kshuffle.scheduler.kubeUrl", null);
            if (kubeUrl == null && client.getMasterUrl().getProtocol().equals("http")) {
                kubeUrl = client.getMasterUrl().toString();
            }
            if (kubeUrl != null) {
                command.add("--kube-url=" + kubeUrl);
            }
            launch();
        } catch (IOException | InterruptedException e) {
            if (e instanceof InterruptedException) {
                Thread.currentThread().interrupt();
            }
            throw new IllegalStateException("cannot start kshuffle-scheduler: " + e, e);
        }
        poller = new Thread(this::poll, "kshuffle-scheduler-events");
        poller.setDaemon(true);
        poller.start();
    }

    /** The pod Spark's builder makes, less what is each executor's own. */
    private Pod executorPod(String applicationId) throws IOException {
        ResourceProfile profile = ResourceProfile$.MODULE$.getOrCreateDefaultProfile(conf);
        KubernetesExecutorConf executorConf = KubernetesConf.createExecutorConf(
                conf, PLACEHOLDER_ID, applicationId, driverPod, ResourceProfile.DEFAULT_RESOURCE_PROFILE_ID());
        KubernetesExecutorSpec spec = builder.buildFromFeatures(executorConf, securityManager, client, profile);
        if (!isEmpty(call(spec, "executorKubernetesResources"))) {
            throw new IllegalStateException("kshuffle-scheduler cannot create executor-specific "
                    + "resources (on-demand persistent volume claims); use Spark's allocator");
        }
        Container container = spec.pod().container();
        Pod pod = new PodBuilder(spec.pod().pod()).editOrNewSpec().addToContainers(container).endSpec().build();
        String name = pod.getMetadata().getName();
        String suffix = "-exec-" + PLACEHOLDER_ID;
        if (name == null || !name.endsWith(suffix)) {
            throw new IllegalStateException("unexpected executor pod name " + name);
        }
        pod.getMetadata().setName(null);
        if (pod.getMetadata().getLabels() != null) {
            pod.getMetadata().getLabels().remove(EXEC_ID_LABEL);
        }
        if (pod.getSpec().getHostname() != null) {
            // Kept as a marker: the scheduler sets each executor's hostname as Spark does.
            pod.getSpec().setHostname("executor");
        }
        // The builder copied the container: the pod's own copy is the last one.
        List<Container> containers = pod.getSpec().getContainers();
        List<EnvVar> env = containers.get(containers.size() - 1).getEnv();
        if (env != null) {
            env.removeIf(e -> EXEC_ID_ENV.equals(e.getName()));
        }
        String text = Serialization.asJson(pod);
        if (text.contains(PLACEHOLDER_ID)) {
            throw new IllegalStateException("the executor pod has executor-specific fields "
                    + "kshuffle-scheduler does not set: " + text);
        }
        prefix = name.substring(0, name.length() - suffix.length());
        containerName = container.getName();
        return pod;
    }

    private String properties(String applicationId) {
        Map<String, String> out = new TreeMap<>();
        for (Tuple2<String, String> kv : conf.getAll()) {
            if (passed(kv._1()) && kv._2().indexOf('\n') < 0 && kv._2().indexOf('\r') < 0) {
                out.put(kv._1(), kv._2());
            }
        }
        out.remove("spark.kubernetes.executor.podTemplateFile");
        out.put("spark.app.id", applicationId);
        out.put("spark.kubernetes.namespace", namespace);
        out.put("spark.kubernetes.executor.podNamePrefix", prefix);
        out.put("spark.kubernetes.executor.podTemplateContainerName", containerName);
        StringBuilder text = new StringBuilder("# Written by io.kshuffle.spark.KshufflePodsAllocator\n");
        out.forEach((k, v) -> text.append(k).append('=').append(v).append('\n'));
        return text.toString();
    }

    private static String newToken() {
        byte[] bytes = new byte[32];
        new SecureRandom().nextBytes(bytes);
        StringBuilder hex = new StringBuilder();
        for (byte b : bytes) {
            hex.append(String.format("%02x", b & 0xff));
        }
        return hex.toString();
    }

    private static boolean passed(String key) {
        if (key.startsWith(WITHHELD_PREFIX)) {
            return false;
        }
        for (String p : PASSED_PREFIXES) {
            if (key.startsWith(p)) {
                return true;
            }
        }
        for (String k : PASSED_KEYS) {
            if (key.equals(k)) {
                return true;
            }
        }
        return false;
    }

    /** Starts the scheduler and waits until it has listed the executor pods. */
    private void launch() throws IOException, InterruptedException {
        Path address = dir.resolve("address");
        Files.deleteIfExists(address);
        // Its log goes to the driver's standard error, next to Spark's own.
        List<String> args = new ArrayList<>(command);
        if (maxId.get() > 0) {
            args.add("--first-executor-id=" + (maxId.get() + 1));
        }
        ProcessBuilder pb = new ProcessBuilder(args).redirectErrorStream(true);
        LOG.info("Starting {}", String.join(" ", args));
        Process p = pb.start();
        Thread pump = new Thread(() -> {
            try (InputStream log = p.getInputStream()) {
                log.transferTo(System.err);
            } catch (IOException e) {
                // The scheduler exited.
            }
        }, "kshuffle-scheduler-log");
        pump.setDaemon(true);
        pump.start();
        long timeoutMs = conf.getTimeAsMs("spark.kshuffle.scheduler.startTimeout", "60s");
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        URI uri = null;
        while (true) {
            if (!p.isAlive()) {
                throw new IOException("kshuffle-scheduler exited with code " + p.exitValue()
                        + " (its log is above)");
            }
            if (System.nanoTime() > deadline) {
                p.destroyForcibly();
                throw new IOException("kshuffle-scheduler was not ready within " + timeoutMs + " ms");
            }
            if (uri == null && Files.exists(address)) {
                uri = URI.create("http://" + new String(Files.readAllBytes(address), StandardCharsets.UTF_8).trim());
            }
            if (uri != null) {
                try {
                    HttpResponse<String> r = http.send(
                            HttpRequest.newBuilder(uri.resolve("/ready")).timeout(Duration.ofSeconds(5)).build(),
                            HttpResponse.BodyHandlers.ofString());
                    if (r.statusCode() == 200) {
                        break;
                    }
                } catch (IOException e) {
                    // Not listening yet.
                }
            }
            Thread.sleep(50);
        }
        synchronized (this) {
            process = p;
            base = uri;
            sent = wanted < 0;
        }
        startedAtMs = System.currentTimeMillis();
        LOG.info("kshuffle-scheduler is ready at {}", uri);
    }

    @Override
    public void setTotalExpectedExecutors(scala.collection.immutable.Map<ResourceProfile, Object> totals) {
        int total = 0;
        scala.collection.Iterator<Tuple2<ResourceProfile, Object>> it = totals.iterator();
        while (it.hasNext()) {
            Tuple2<ResourceProfile, Object> e = it.next();
            int n = ((Number) e._2()).intValue();
            if (e._1().id() == ResourceProfile.DEFAULT_RESOURCE_PROFILE_ID()) {
                total = n;
            } else if (n > 0 && !refusedProfiles) {
                // Its executors would never come and its stages would wait for ever: the
                // application stops instead, saying why.
                refusedProfiles = true;
                LOG.error("kshuffle-scheduler serves the default resource profile only, and this "
                        + "application asks for {} executors of resource profile {} (stage-level "
                        + "scheduling): stopping the application. Use Spark's own allocator (no "
                        + "spark.kubernetes.allocation.pods.allocator) for such applications.",
                        n, e._1().id());
                Option<SparkContext> active = SparkContext$.MODULE$.getActive();
                if (active.isDefined()) {
                    active.get().stopInNewThread();
                }
            }
        }
        synchronized (this) {
            wanted = total;
            sent = false;
        }
        send();
    }

    /**
     * Sends the wanted total when the scheduler does not have it yet. One send at a time (Spark's
     * thread and the poller's retries), each reading the newest total: an older total can never
     * reach the scheduler after a newer one.
     */
    private void send() {
        synchronized (sendLock) {
            URI uri;
            int total;
            synchronized (this) {
                if (sent || base == null) {
                    return;
                }
                uri = base;
                total = wanted;
            }
            try {
                HttpResponse<String> r = http.send(api(uri, "/v1/executors/total")
                                .timeout(Duration.ofSeconds(10))
                                .header("content-type", "application/json")
                                .PUT(HttpRequest.BodyPublishers.ofString("{\"total\":" + total + "}"))
                                .build(),
                        HttpResponse.BodyHandlers.ofString());
                if (r.statusCode() != 200) {
                    // Not retried: the same total would be refused again.
                    LOG.error("kshuffle-scheduler refused a total of {} executors: {}", total, r.body());
                }
                synchronized (this) {
                    // A newer total may have come meanwhile: the call that set it is waiting
                    // for the lock, and sends it next.
                    if (wanted == total) {
                        sent = true;
                    }
                }
            } catch (IOException e) {
                LOG.warn("cannot reach kshuffle-scheduler to ask for {} executors (retrying): {}",
                        total, e.toString());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /** Follows the scheduler's executor events (for {@link #isDeleted}), resends a total that
     * did not get through, and restarts the scheduler if it exits while the application runs. */
    private void poll() {
        long after = 0;
        long every = conf.getTimeAsMs("spark.kshuffle.scheduler.pollInterval", "500ms");
        while (!stopping) {
            try {
                Thread.sleep(every);
                Process p;
                URI uri;
                synchronized (this) {
                    p = process;
                    uri = base;
                }
                if (stopping) {
                    return;
                }
                if (!p.isAlive()) {
                    restart(p);
                    // The new scheduler numbers its events from 1.
                    after = 0;
                    continue;
                }
                send();
                HttpResponse<String> r = http.send(
                        api(uri, "/v1/events?after=" + after)
                                .timeout(Duration.ofSeconds(10)).build(),
                        HttpResponse.BodyHandlers.ofString());
                if (r.statusCode() != 200) {
                    continue;
                }
                JsonNode page = json.readTree(r.body());
                for (JsonNode ev : page.path("events")) {
                    long id = ev.path("id").asLong();
                    maxId.accumulateAndGet(id, Math::max);
                    if ("removed".equals(ev.path("event").asText())) {
                        deleted.add(id);
                    }
                }
                if (page.path("missed").asBoolean(false)) {
                    LOG.warn("kshuffle-scheduler dropped executor events before {}", page.path("next").asLong());
                }
                after = page.path("next").asLong(after);
            } catch (InterruptedException e) {
                return;
            } catch (IOException | RuntimeException e) {
                if (!stopping) {
                    LOG.warn("kshuffle-scheduler events: {}", e.toString());
                }
            }
        }
    }

    /**
     * Starts the scheduler again after it exited, waiting 1, 2, 4 … 30 s after failed starts
     * (a scheduler that exits within {@value #STABLE_SECONDS} s of starting is one); gives up
     * after {@value #MAX_FAILED_STARTS} in a row.
     */
    private void restart(Process dead) throws InterruptedException {
        long ranMs = System.currentTimeMillis() - startedAtMs;
        // A scheduler that exits soon after starting counts as a failed start.
        failedStarts = ranMs >= STABLE_SECONDS * 1000L ? 0 : failedStarts + 1;
        LOG.error("kshuffle-scheduler exited with code {} after {} s; starting it again",
                dead.exitValue(), ranMs / 1000);
        synchronized (this) {
            base = null;
        }
        while (!stopping) {
            if (failedStarts > 0) {
                Thread.sleep(Math.min(30_000L, 1000L << Math.min(failedStarts - 1, 5)));
            }
            try {
                launch();
                send();
                return;
            } catch (IOException e) {
                failedStarts++;
                if (failedStarts >= MAX_FAILED_STARTS) {
                    LOG.error("kshuffle-scheduler did not start {} times in a row ({}); "
                            + "no more executors will be created", failedStarts, e.toString());
                    stopping = true;
                    return;
                }
                LOG.error("cannot start kshuffle-scheduler again: {}", e.toString());
            }
        }
    }

    @Override
    public boolean isDeleted(String executorId) {
        try {
            long id = Long.parseLong(executorId);
            maxId.accumulateAndGet(id, Math::max);
            return deleted.contains(id);
        } catch (NumberFormatException e) {
            return false;
        }
    }

    @Override
    public void stop(String applicationId) {
        stopping = true;
        if (poller != null) {
            poller.interrupt();
        }
        Process p;
        URI uri;
        synchronized (this) {
            p = process;
            uri = base;
        }
        if (p != null) {
            stopScheduler(p, uri);
        }
        if (dir != null) {
            try (Stream<Path> files = Files.walk(dir)) {
                files.sorted(Comparator.reverseOrder()).forEach(f -> f.toFile().delete());
            } catch (IOException e) {
                // Left in the temp dir.
            }
        }
    }

    /** Deletes the executor pods (as Spark's allocator does) and stops the scheduler. */
    private void stopScheduler(Process p, URI uri) {
        if (uri != null && conf.getBoolean("spark.kubernetes.executor.deleteOnTermination", true)) {
            try {
                http.send(api(uri, "/v1/application")
                                .timeout(Duration.ofSeconds(30)).DELETE().build(),
                        HttpResponse.BodyHandlers.discarding());
            } catch (IOException e) {
                LOG.warn("kshuffle-scheduler did not delete the executor pods: {}", e.toString());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        try {
            // The end of its standard input stops the scheduler.
            p.getOutputStream().close();
        } catch (IOException e) {
            // Already closed.
        }
        try {
            if (!p.waitFor(15, TimeUnit.SECONDS)) {
                p.destroyForcibly();
            }
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
        }
    }

    /** A request to the scheduler's allocation API, with its bearer token. */
    private HttpRequest.Builder api(URI uri, String path) {
        return HttpRequest.newBuilder(uri.resolve(path)).header("authorization", "Bearer " + token);
    }

    /** A no-argument method by name: its return type differs between Scala 2.12 and 2.13. */
    private static Object call(Object target, String method) {
        try {
            return target.getClass().getMethod(method).invoke(target);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("Spark has no " + method + "()", e);
        }
    }

    private static boolean isEmpty(Object collection) {
        return (Boolean) call(collection, "isEmpty");
    }
}
