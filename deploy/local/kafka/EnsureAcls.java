/*
 * Grants the worker's principals exactly what a worker needs (secured mode of the local stack), idempotently:
 * READ on the topics it consumes, WRITE on the topics it publishes to, READ on its consumer group.
 * Nothing else: a missing grant is refused by the broker's StandardAuthorizer (allow.everyone.if.no.acl.found
 * is false), which the integration tests rely on to show the worker's refusal messages.
 *
 *   java -cp '.tools/kafka-<v>/libs/*' EnsureAcls.java <bootstrap> <principals,> <group> <read-topics,> <write-topics,>
 *
 * Runs against the stack's PLAINTEXT listener, whose ANONYMOUS principal is the stack's super user.
 */

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class EnsureAcls {
    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: EnsureAcls <bootstrap> <principals,> <group> <read-topics,> <write-topics,>");
            System.exit(2);
        }
        List<AclBinding> acls = new ArrayList<>();
        for (String principal : args[1].split(",")) {
            acls.add(allow(ResourceType.GROUP, args[2], principal, AclOperation.READ));
            for (String topic : args[3].split(",")) {
                acls.add(allow(ResourceType.TOPIC, topic, principal, AclOperation.READ));
                acls.add(allow(ResourceType.TOPIC, topic, principal, AclOperation.DESCRIBE));
            }
            for (String topic : args[4].split(",")) {
                acls.add(allow(ResourceType.TOPIC, topic, principal, AclOperation.WRITE));
                acls.add(allow(ResourceType.TOPIC, topic, principal, AclOperation.DESCRIBE));
            }
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(acls).all().get();  // creating an existing ACL is a no-op
        }
        System.out.println("ACLs for " + args[1] + ": " + acls.size());
    }

    private static AclBinding allow(ResourceType type, String name, String principal, AclOperation op) {
        return new AclBinding(new ResourcePattern(type, name, PatternType.LITERAL),
                new AccessControlEntry(principal, "*", op, AclPermissionType.ALLOW));
    }
}
